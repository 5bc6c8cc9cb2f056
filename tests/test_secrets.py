"""No password in any message, repr, log record or CLI output, whatever the URL looks like.

Every master below carries the same password, made of distinctive pieces joined by the
characters that break URL parsers (``, # / ? @ :``): a message may not show the password,
its percent-encoded form, nor any of its pieces (a parser that cut the URL in the wrong
place shows a piece). Masters that parse point at a closed port, so the lock and the CLI
meet them down.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner

from celery_redlock import ConfigurationError, QuorumUnavailable, Redlock
from celery_redlock._celery.appconf import RedlockConfig
from celery_redlock._core.masters import parse_master, redact
from celery_redlock.cli import redlock
from celery_redlock.settings import split_urls
from celery_redlock.testing import free_port

PIECES = ("Q1wx", "E2ry", "T3yz", "U4iw", "O5pv", "A6su", "D7ft")
PASSWORD = "Q1wx,E2ry#T3yz/U4iw?O5pv@A6su:D7ft"
ENCODED = quote(PASSWORD, safe="")
SECRETS = (PASSWORD, ENCODED, *PIECES)


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()  # nobody listens: every master below is down


def hostile(port: int) -> list[Any]:
    down = f"127.0.0.1:{port}"
    comma = "Q1wx,E2ry"
    return [
        f"redis://:{PASSWORD}@{down}/0",
        f"redis://user:{PASSWORD}@{down}/0",
        f"rediss://:{PASSWORD}@{down}/0",
        f"redis://:{ENCODED}@{down}/0",
        f"redis://{down}/0?password={ENCODED}",
        f"redis://{down}/0?db=1&password={PASSWORD}",
        f"redis:/:{PASSWORD}@{down}/0",
        f"redis:/:{ENCODED}@{down}/0",
        f"redis://:{ENCODED}",  # a password read as a port
        f"redis://:{ENCODED}@127.0.0.1:{PIECES[0]}/0",
        f"redis://:{ENCODED}@[::1]:{port}/0",
        f"redis://:{PASSWORD}@[::1]:{port}/0",
        f"redis://:{ENCODED}@[::1/0",
        f"unix://:{ENCODED}@/nonexistent/{port}.sock?db=1",
        f"unix://:{PASSWORD}@/nonexistent/{port}.sock?db=1",
        f"redis://:{comma}@{down}/0, redis://:{comma}@127.0.0.1:{port + 1}/0",
        f"redis://:{comma}@{down}/0,redis://:{comma}@127.0.0.1:{port + 1}/0",
        {"host": "127.0.0.1", "port": port, "password": PASSWORD},
        redis.Redis(host="127.0.0.1", port=port, password=PASSWORD),
    ]


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {where}: {text}"


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every record logged while a test runs, whatever the levels configured."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = seen.append  # type: ignore[assignment,method-assign]
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield seen
    root.setLevel(old)
    root.removeHandler(handler)


def as_masters(master: Any) -> Any:
    return master if isinstance(master, str) else [master]


def test_the_table_holds_what_it_claims(port: int) -> None:
    """The forms parse as a user would expect, so the rest tests what users meet."""
    first, _user, _tls, encoded, query, *_ = hostile(port)
    assert parse_master(encoded).kwargs["password"] == PASSWORD
    assert parse_master(query).kwargs["password"] == PASSWORD
    with pytest.raises(ConfigurationError, match="percent-encode"):
        parse_master(first)
    # A comma-separated setting is cut only before a scheme: the comma stays in the password.
    config = RedlockConfig.from_conf({"redlock_masters": hostile(port)[15]})
    assert [parse_master(m).kwargs["password"] for m in config.masters] == ["Q1wx,E2ry"] * 2


@pytest.mark.parametrize("index", range(19))
def test_no_secret_in_errors_reprs_votes_or_logs(
    port: int, index: int, records: list[logging.LogRecord]
) -> None:
    master = hostile(port)[index]
    texts = [_config_or_lock(master)]
    texts += [f"{r.getMessage()} {r.exc_text or ''}" for r in records]
    for text in texts:
        assert_no_secret(text, f"master #{index}")


def _config_or_lock(master: Any) -> str:
    try:
        config = RedlockConfig.from_conf({"redlock_masters": as_masters(master)})
    except ConfigurationError as exc:
        return f"{exc} {exc!r}"
    out = [repr(config)]
    with Redlock(list(config.masters), retry_count=0) as dlm:
        out += [repr(dlm), str(dlm), *map(repr, dlm.roster.specs), *dlm.masters]
        with pytest.raises(QuorumUnavailable) as info:
            dlm.acquire("r", 10)
        out += [str(info.value), repr(info.value), *map(str, info.value.votes)]
    return " ".join(out)


COMMANDS: list[tuple[str, ...]] = [
    ("status",),
    ("status", "--json"),
    ("list",),
    ("list", "--json"),
    ("check",),
    ("check", "--json"),
    ("release", "some-resource", "--yes"),
    ("arm", "--yes"),
]


@pytest.mark.parametrize("index", range(19))
def test_no_secret_in_any_cli_output(
    port: int, index: int, records: list[logging.LogRecord]
) -> None:
    master = hostile(port)[index]
    for command in COMMANDS:
        app = Celery("secrets", set_as_current=False)
        app.conf.update(redlock_masters=as_masters(master))
        obj = CLIContext(app=app, no_color=True, workdir=None)
        result = CliRunner().invoke(redlock, list(command), obj=obj)
        assert isinstance(result.exception, (SystemExit, type(None))), result.exception
        assert result.exit_code in (0, 1, 3), result.output
        assert_no_secret(result.output, f"{' '.join(command)} with master #{index}")
    for record in records:
        assert_no_secret(f"{record.getMessage()} {record.exc_text or ''}", "a log record")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: parse_master(f"redis://:{ENCODED}@").name, "redis://localhost:6379/0"),
        (lambda: repr(parse_master(f"redis://:{ENCODED}@")), "MasterSpec('redis://localhost"),
    ],
)
def test_a_url_without_host_names_none_of_its_secrets(
    make: Callable[[], str], expected: str
) -> None:
    text = make()  # (not connected: it names the machine's own Redis)
    assert text.startswith(expected)
    assert_no_secret(text, "a spec")


def test_redact_hides_every_part_that_may_be_a_secret() -> None:
    cases = {
        f"redis://:{PASSWORD}@h:1/0": "redis://***@h:1/0",
        "redis://h:1/0?db=2&password=x&y=1": "redis://h:1/0?db=2&password=***",
        "redis://h:1/0?ssl_password=x": "redis://h:1/0?ssl_password=***",
        "redis:/:pw@h": "redis:/***@h",
        "redis://:pw": "redis://:***",
        "redis://h:1/0#frag": "redis://h:1/0***",
        "redis://h/0?password=a@b:c": "redis://***@***",
        "redis://[::1]/0": "redis://[::1]/0",
        "unix://:pw@/tmp/x.sock?db=1": "unix://***@/tmp/x.sock?db=1",
    }
    for url, shown in cases.items():
        assert redact(url) == shown
        assert not re.search(r"pw|frag|x&", redact(url))


def test_a_masters_string_is_cut_only_before_a_scheme() -> None:
    given = " redis://:a,b c@h:1/0, rediss://h:2/0\nunix:///tmp/x.sock?db=1 ,"
    assert split_urls(given) == [
        "redis://:a,b c@h:1/0",
        "rediss://h:2/0",
        "unix:///tmp/x.sock?db=1",
    ]
    assert split_urls("REDIS://h:1/0,redis://h:2/0") == ["REDIS://h:1/0", "redis://h:2/0"]
    assert split_urls(" , ") == []

"""Inputs that used to escape as raw exceptions (OverflowError, UnicodeEncodeError,
ValueError) or reach Redis and come back as an outage: each is a ConfigurationError naming
the setting or argument, raised before any command goes out, at every public entry of both
drivers, with its exact message in docs/errors.md."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from celery_redlock import AsyncRedlock, ConfigurationError, LockSettings, Redlock
from celery_redlock.testing import RedisGroup
from tests.test_errors import DOC, M3

HUGE = 10**400
MAX_TTL = 2**53 / 1000  # seconds: config.MAX_TTL
SURROGATE = "a\ud800"
TTL_HUGE = "ttl must be finite and more than 0 seconds, got an int of 1329 bits"
TTL_BEYOND = (
    "ttl 10000000000000.0 s is beyond the longest TTL (9007199254741 s, 2**53 ms):"
    " Redis would refuse it, or round it"
)
NO_UTF8 = "resource has no UTF-8 form: surrogates not allowed at position 1 ('\\ud800')"


def sync(**options: Any) -> Redlock:
    return Redlock(M3, **options)


def aio(call: Callable[[AsyncRedlock], Any], **options: Any) -> Callable[[], object]:
    """A call on a fresh AsyncRedlock, run to its end."""

    async def main() -> object:
        return await call(AsyncRedlock(M3, **options))

    return lambda: asyncio.run(main())


def entered(dlm: Redlock, resource: str) -> None:
    with dlm.lock(resource, 10):
        pass  # pragma: no cover - never entered


async def entered_async(dlm: AsyncRedlock, resource: str) -> None:
    async with dlm.lock(resource, 10):
        pass  # pragma: no cover - never entered


#: (input as the docs show it, what raises it, the exact message)
CASES: list[tuple[str, Callable[[], object], str]] = [
    ("acquire(r, 10**400)", lambda: sync().acquire("r", HUGE), TTL_HUGE),
    ("AsyncRedlock: acquire(r, 10**400)", aio(lambda d: d.acquire("r", HUGE)), TTL_HUGE),
    (
        "acquire(r, 1e13) with restart_guard=0",
        lambda: sync(restart_guard=0).acquire("r", 1e13),
        TTL_BEYOND,
    ),
    (
        "AsyncRedlock: acquire(r, 1e13) with restart_guard=0",
        aio(lambda d: d.acquire("r", 1e13), restart_guard=0),
        TTL_BEYOND,
    ),
    (
        "acquire(r, 10, blocking=True, timeout=10**400)",
        lambda: sync().acquire("r", 10, blocking=True, timeout=HUGE),
        "timeout must be finite and at least 0 seconds, got an int of 1329 bits",
    ),
    (
        "acquire(r, 10, auto_renew=True, max_hold=10**400)",
        lambda: sync().acquire("r", 10, auto_renew=True, max_hold=HUGE),
        "max_hold must be finite and more than 0 seconds, got an int of 1329 bits",
    ),
    (
        "LockSettings(master_timeout=10**400)",
        lambda: LockSettings(master_timeout=HUGE),
        "master_timeout must be finite and more than 0 seconds, got an int of 1329 bits",
    ),
    (
        "LockSettings(restart_guard=1e13)",
        lambda: LockSettings(restart_guard=1e13),
        "restart_guard 10000000000000.0 s is beyond the longest TTL (9007199254741 s)",
    ),
    (
        "LockSettings(retry_count=10**5000)",
        lambda: LockSettings(retry_count=10**5000),
        "retry_count must be 0 to 1000, got an int of 16610 bits",
    ),
    (
        "LockSettings(drift_factor=10**400)",
        lambda: LockSettings(drift_factor=HUGE),
        "drift_factor must be a number from 0 to below 0.5, got an int of 1329 bits",
    ),
    (
        'LockSettings(key_prefix="p\\udc80:")',
        lambda: LockSettings(key_prefix="p\udc80:"),
        "key_prefix has no UTF-8 form: surrogates not allowed at position 1 ('\\udc80')",
    ),
    ('acquire("a\\ud800", 10)', lambda: sync().acquire(SURROGATE, 10), NO_UTF8),
    ('AsyncRedlock: acquire("a\\ud800", 10)', aio(lambda d: d.acquire(SURROGATE, 10)), NO_UTF8),
    ('lock("a\\ud800", 10)', lambda: entered(sync(), SURROGATE), NO_UTF8),
    ('AsyncRedlock: lock("a\\ud800", 10)', aio(lambda d: entered_async(d, SURROGATE)), NO_UTF8),
    ('release("a\\ud800", token)', lambda: sync().release(SURROGATE, "t"), NO_UTF8),
    (
        'AsyncRedlock: release("a\\ud800", token)',
        aio(lambda d: d.release(SURROGATE, "t")),
        NO_UTF8,
    ),
    ('locked("a\\ud800")', lambda: sync().locked(SURROGATE), NO_UTF8),
    ('AsyncRedlock: locked("a\\ud800")', aio(lambda d: d.locked(SURROGATE)), NO_UTF8),
    ('holder("a\\ud800")', lambda: sync().holder(SURROGATE), NO_UTF8),
    ('AsyncRedlock: holder("a\\ud800")', aio(lambda d: d.holder(SURROGATE)), NO_UTF8),
    (
        'release(r, "t\\ud800")',
        lambda: sync().release("r", "t\ud800"),
        "token has no UTF-8 form: surrogates not allowed at position 1 ('\\ud800')",
    ),
    (
        'AsyncRedlock: release(r, "t\\ud800")',
        aio(lambda d: d.release("r", "t\ud800")),
        "token has no UTF-8 form: surrogates not allowed at position 1 ('\\ud800')",
    ),
    (
        'acquire(r, 10, owner="me\\ud800")',
        lambda: sync().acquire("r", 10, owner="me\ud800"),
        "owner must be printable text of at most 200 characters, not 'me\\ud800'",
    ),
    (
        'Redlock([{"port": "abc"}])',
        lambda: Redlock([{"port": "abc"}]),
        "master option port must be a whole number from 1 to 65535, not 'abc'",
    ),
    (
        'Redlock([{"host": None}])',
        lambda: Redlock([{"host": None}]),
        "master option host must be a host name or address, not None",
    ),
    (
        'Redlock([{"db": "x"}])',
        lambda: Redlock([{"db": "x"}]),
        "master option db must be a whole number of at least 0, not 'x'",
    ),
]


@pytest.mark.parametrize(("given", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_input_is_a_configuration_error_naming_it(
    given: str, call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        call()
    assert str(err.value) == message, given


def test_the_docs_table_shows_every_message_asserted_here() -> None:
    doc = DOC.read_text()
    missing = [message for _given, _call, message in CASES if message not in doc]
    assert not missing, f"docs/errors.md lacks: {missing}"


def test_the_longest_ttl_reaches_redis_as_given_and_extend_is_bounded_too() -> None:
    """At the bound, Redis keeps the key for exactly that long (no outage); above it, and
    for extend too, the call is refused before any command goes out."""
    with RedisGroup(3) as group, Redlock(group.urls, restart_guard=0) as dlm:
        lock = dlm.acquire("r", MAX_TTL)
        assert lock is not None
        with group[0].client() as client:
            assert int(client.pttl(lock.key)) > 2**53 - 60_000
        with pytest.raises(ConfigurationError, match="beyond the longest TTL"):
            lock.extend(MAX_TTL * 2)
        with pytest.raises(ConfigurationError, match="got an int of 1329 bits"):
            lock.extend(HUGE)
        assert lock.valid
        assert lock.release()


def test_a_lease_beyond_the_longest_ttl_is_refused_by_the_celery_settings() -> None:
    """With the guard off, ``redlock_lease=1e16`` was accepted and every task then
    retried its outage forever (Redis refused the TTL)."""
    from celery import Celery

    from celery_redlock._celery.appconf import RedlockConfig

    app = Celery(set_as_current=False)
    app.conf.update(redlock_masters=M3, redlock_restart_guard=0, redlock_lease=1e16)
    with pytest.raises(ConfigurationError, match=r"redlock_lease: ttl 1e\+16 s is beyond"):
        RedlockConfig.from_conf(app.conf)


#: Checked at run time, as a misspelt keyword is (a type checker sees it too).
MISSPELT_OPTION: dict[str, Any] = {"auto_renw": True}


def entered_with(dlm: Redlock, options: dict[str, Any]) -> None:
    with dlm.lock("r", 10, **options):
        pass  # pragma: no cover - never entered


async def entered_async_with(dlm: AsyncRedlock, options: dict[str, Any]) -> None:
    async with dlm.lock("r", 10, **options):
        pass  # pragma: no cover - never entered


MISSPELT: list[tuple[str, Callable[[], object]]] = [
    ("acquire", lambda: sync().acquire("r", 10, **MISSPELT_OPTION)),
    ("lock", lambda: entered_with(sync(), MISSPELT_OPTION)),
    ("AsyncRedlock.acquire", aio(lambda d: d.acquire("r", 10, **MISSPELT_OPTION))),
    ("AsyncRedlock.lock", aio(lambda d: entered_async_with(d, MISSPELT_OPTION))),
]


@pytest.mark.parametrize(("given", "call"), MISSPELT, ids=[c[0] for c in MISSPELT])
def test_a_misspelt_option_is_refused_by_name_as_python_would(
    given: str, call: Callable[[], object]
) -> None:
    """The options are one typed list (``AcquireOptions``) for both managers' verbs; a
    name outside it fails the call before any round, as an unknown keyword does."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'auto_renw'"):
        call()

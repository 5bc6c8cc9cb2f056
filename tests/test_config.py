"""Bad input fails at construction with a message naming the cause, never a password."""

from __future__ import annotations

import logging
import math
import os
from datetime import timedelta
from typing import Any

import pytest
import redis

from celery_redlock import ConfigurationError, LockSettings, Redlock
from celery_redlock._core.masters import parse_masters, redact

M3 = ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0", "redis://127.0.0.1:3/0"]


@pytest.mark.parametrize(
    ("masters", "message"),
    [
        ([], "at least one"),
        ("redis://127.0.0.1:1/0", "list"),
        (["http://127.0.0.1:1/0"], "must start with redis://"),
        (["redis://127.0.0.1:notaport/0"], "cannot be parsed"),
        ([""], "non-empty"),
        ([42], "not int"),
        ([{"hots": "x"}], "not redis-py arguments"),
        (["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"], "listed twice"),
        (["redis://127.0.0.1:1/0", "redis://127.0.0.1:1/5"], "listed twice"),
        (["redis://localhost:1/0", "redis://127.0.0.1:1/0"], "listed twice"),
        (["unix:///tmp/a.sock", "unix:///tmp/a.sock?db=2"], "listed twice"),
    ],
)
def test_bad_masters_are_refused_with_their_cause(masters: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Redlock(masters)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("redis://127.0.0.1:7/0", "redis://127.1:7/0"),  # short IPv4 form
        ("redis://127.0.0.1:7/0", "redis://0x7f.0.0.1:7/0"),
        ("redis://127.0.0.1:7/0", "redis://0.0.0.0:7/0"),  # reaches a local server
        ("redis://127.0.0.1:7/0", "redis://[::1]:7/0"),
        ("redis://127.0.0.1:7/0", "redis://[::ffff:127.0.0.1]:7/0"),  # IPv4-mapped IPv6
        ("redis://localhost:7/0", "redis://localhost.:7/0"),  # trailing dot
        ("redis://127.0.0.1:7/0", "redis://127.0.0.2:7/0"),  # all of 127/8 is this host
        ("redis://10.0.0.1:7/0", "redis://[::ffff:a00:1]:7/0"),
        ("redis://db.example:7/0", "redis://DB.Example.:7/0"),
        ("redis://[2001:db8::1]:7/0", "redis://[2001:0db8:0:0::1]:7/0"),
        ({"host": "127.0.0.1", "port": 7}, {"host": "::1", "port": 7}),
        ("unix:///tmp/a.sock", "unix:///tmp//a.sock"),
        ("unix:///tmp/a.sock", "unix:///tmp/./a.sock"),
        ("unix:///tmp/a.sock", "unix:///tmp/x/../a.sock"),
        ({"unix_socket_path": "a.sock"}, {"unix_socket_path": "./x/../a.sock"}),
    ],
)
def test_one_server_under_two_spellings_is_refused(first: Any, second: Any) -> None:
    """Spellings of one address are compared in their canonical form, not as written: a
    server listed twice would let it and one dead master make "2 of 3"."""
    with pytest.raises(ConfigurationError, match="is listed twice"):
        Redlock([first, second, "redis://10.9.9.9:7/0"])


def test_a_relative_socket_path_is_its_absolute_path() -> None:
    absolute = {"unix_socket_path": os.path.join(os.getcwd(), "a.sock")}
    with pytest.raises(ConfigurationError, match="is listed twice"):
        Redlock([{"unix_socket_path": "a.sock"}, absolute, "redis://10.9.9.9:7/0"])


def test_distinct_hosts_and_ports_are_not_taken_for_one_server() -> None:
    Redlock(["redis://127.0.0.1:7/0", "redis://127.0.0.1:8/0", "redis://10.0.0.1:7/0"])
    Redlock(["redis://db1.example:7/0", "redis://db2.example:7/0", "unix:///tmp/b.sock"])


def test_passwords_never_appear_in_errors_names_or_reprs() -> None:
    url = "redis://user:s3cret@127.0.0.1:1/0"
    with pytest.raises(ConfigurationError) as err:
        Redlock([url, "redis://:s3cret@127.0.0.1:1/0"])
    assert "s3cret" not in str(err.value)
    dlm = Redlock(
        [
            url,
            {"host": "127.0.0.1", "port": 2, "password": "s3cret"},
            redis.Redis(port=3, password="s3cret"),
        ]
    )
    assert "s3cret" not in repr(dlm)
    assert "s3cret" not in " ".join(dlm.masters)
    assert "s3cret" not in repr(parse_masters([url]))
    with pytest.raises(ConfigurationError) as bad:
        Redlock(["redis://user:s3cret@127.0.0.1:port/0"])
    assert "s3cret" not in str(bad.value)
    assert "s3cret" not in redact(url)


def test_masters_may_be_urls_dicts_or_clients() -> None:
    dlm = Redlock(
        [
            "rediss://127.0.0.1:1/0",
            {"host": "127.0.0.1", "port": 2, "db": 3},
            redis.Redis(unix_socket_path="/tmp/x.sock"),
        ]
    )
    assert dlm.masters == (
        "rediss://127.0.0.1:1/0",
        "redis://127.0.0.1:2/3",
        "unix:///tmp/x.sock?db=0",
    )
    assert dlm.quorum == 2


def test_our_timeouts_bound_a_clients_unbounded_ones() -> None:
    spec = parse_masters([redis.Redis(port=1, socket_timeout=None)])[0]
    kwargs = spec.connect_kwargs(0.1)
    assert kwargs["socket_timeout"] == 0.1
    assert kwargs["socket_connect_timeout"] == 0.1
    assert (
        parse_masters([redis.Redis(port=1, socket_timeout=0.01)])[0].connect_kwargs(0.1)[
            "socket_timeout"
        ]
        == 0.01
    )


def test_an_even_number_of_masters_is_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_redlock"):
        Redlock([*M3, "redis://127.0.0.1:4/0"])
    assert "even" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"master_timeout": 0}, "master_timeout"),
        ({"master_timeout": math.nan}, "master_timeout"),
        ({"master_timeout": "1"}, "master_timeout"),
        ({"retry_count": -1}, "retry_count"),
        ({"retry_count": 1.5}, "retry_count"),
        ({"retry_delay": math.inf}, "retry_delay"),
        ({"drift_factor": 0.9}, "drift_factor"),
        ({"key_prefix": 3}, "key_prefix"),
        ({"no_such_option": 1}, "unknown lock option"),
    ],
)
def test_bad_options_name_the_setting(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Redlock(M3, **options)


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        (0, "ttl"),
        (-1, "ttl"),
        (math.nan, "ttl"),
        (math.inf, "ttl"),
        ("10", "ttl"),
        (True, "ttl"),
        (0.05, "leaves no validity"),
    ],
)
def test_bad_ttls_are_refused_before_any_round(ttl: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Redlock(M3).acquire("r", ttl)


@pytest.mark.parametrize(
    ("resource", "message"),
    [("", "empty"), (b"bytes", "string"), (None, "string"), ("x" * 2000, "at most")],
)
def test_bad_resources_are_refused(resource: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Redlock(M3).acquire(resource, 10)


def test_durations_accept_timedelta() -> None:
    settings = LockSettings(
        master_timeout=timedelta(milliseconds=50), retry_delay=timedelta(seconds=1)
    )
    assert settings.master_timeout == 0.05
    assert settings.retry_delay == 1.0
    assert settings.ttl(timedelta(seconds=3)) == 3.0


def test_bad_renewal_options_are_refused() -> None:
    dlm = Redlock(M3)
    with pytest.raises(ConfigurationError, match="auto_renew"):
        dlm.acquire("r", 10, max_hold=5)
    with pytest.raises(ConfigurationError, match="shorter than the ttl"):
        dlm.acquire("r", 10, auto_renew=True, renew_every=10)
    with pytest.raises(ConfigurationError, match="timeout"):
        dlm.acquire("r", 10, blocking=True, timeout=-1)


@pytest.mark.parametrize("option", ["master_timeout", "retry_delay"])
def test_milliseconds_carried_over_from_other_libraries_are_refused(option: str) -> None:
    with pytest.raises(ConfigurationError, match="seconds, not milliseconds"):
        Redlock(M3, **{option: 200})

"""Masters: how the user names them, how we connect to them, how we name them in messages.

Masters arrive as URLs (``redis://``, ``rediss://``, ``unix://``), as dicts of redis-py
client arguments, or as ready ``redis.Redis`` clients. All three become a
:class:`MasterSpec`: a connection class and its arguments, with *our* timeouts imposed
(a user's client with no socket timeout would otherwise let one hung master stall every
round forever), plus a redacted display name that is the only way a master is ever named
in an error, a log line or a repr.

:class:`Health` is the per-master circuit breaker both drivers share: a master that just
timed out or refused us is skipped for a short, growing cool-down instead of costing the
full per-master timeout on every round.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
from redis.retry import Retry

from celery_redlock.exceptions import ConfigurationError

MasterLike: TypeAlias = "str | Mapping[str, Any] | redis.Redis"

#: A master that failed is skipped for this long at first, doubling per failure up to the cap.
COOLDOWN_START = 0.1
COOLDOWN_CAP = 2.0


@dataclass(frozen=True, slots=True)
class MasterSpec:
    """How to open connections to one master, and how to name it without secrets."""

    name: str
    identity: tuple[str, ...]
    connection_class: type[Any]
    kwargs: Mapping[str, Any] = field(repr=False)

    def __repr__(self) -> str:
        return f"MasterSpec({self.name!r})"

    def connect_kwargs(self, timeout: float) -> dict[str, Any]:
        """Arguments for a new connection, bounded by our per-master ``timeout``."""
        kw = dict(self.kwargs)
        for name in ("socket_timeout", "socket_connect_timeout"):
            given = kw.get(name)
            kw[name] = timeout if given is None else min(float(given), timeout)
        return kw


def redact(url: str) -> str:
    """A URL without its user info, so passwords never reach a message or a log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    _userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    return parts._replace(netloc=f"***@{hostport}").geturl()


def _describe(
    kwargs: Mapping[str, Any], connection_class: type[Any]
) -> tuple[str, tuple[str, ...]]:
    path = kwargs.get("path")
    db = kwargs.get("db", 0) or 0
    if path:
        return f"unix://{path}?db={db}", ("unix", str(path))
    scheme = "rediss" if "SSL" in connection_class.__name__ else "redis"
    host = str(kwargs.get("host", "localhost"))
    port = int(kwargs.get("port", 6379))
    identity_host = "127.0.0.1" if host in ("localhost", "::1", "127.0.0.1") else host.lower()
    return f"{scheme}://{host}:{port}/{db}", ("tcp", identity_host, str(port))


def _from_url(url: str) -> tuple[type[Any], dict[str, Any]]:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"master URL must be a non-empty string, got {url!r}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"master URL {redact(url)!r} must start with redis://, rediss:// or unix://"
        )
    try:
        pool = redis.ConnectionPool.from_url(url)
    except (ValueError, TypeError) as exc:
        reason = str(exc)
        secret = urlsplit(url).password
        if secret:
            reason = reason.replace(secret, "***")
        raise ConfigurationError(f"master URL {redact(url)!r} cannot be parsed: {reason}") from None
    return pool.connection_class, dict(pool.connection_kwargs)


#: Per-pool machinery a client's settings carry in redis-py 8; our connections make their own.
_POOL_BOUND = ("maint_notifications_", "orig_", "himport_registry")


def _from_client(client: Any) -> tuple[type[Any], dict[str, Any]]:
    pool = client.connection_pool
    return pool.connection_class, dict(pool.connection_kwargs)


def _from_mapping(options: Mapping[str, Any]) -> tuple[type[Any], dict[str, Any]]:
    _check_address(options)
    try:
        client = redis.Redis(**dict(options))
    except TypeError as exc:
        raise ConfigurationError(f"master options are not redis-py arguments: {exc}") from None
    return _from_client(client)


def _check_address(options: Mapping[str, Any]) -> None:
    """The arguments redis-py reads only when it connects, checked now: a wrong host, port
    or db would otherwise show as an outage of that master, not as the mistake it is."""
    if options.get("unix_socket_path") is None:
        host = options.get("host", "localhost")
        if not isinstance(host, str) or not host.strip():
            raise ConfigurationError(
                f"master option host must be a host name or address, not {host!r}"
            )
        _check_whole(options, "port", 6379, 1, 65535)
    _check_whole(options, "db", 0, 0, None)


def _check_whole(
    options: Mapping[str, Any], name: str, default: int, low: int, high: int | None
) -> None:
    """A whole-number option (an int, or its digits as redis-py accepts) within bounds."""
    value = options.get(name, default)
    number = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    fits = isinstance(number, int) and not isinstance(number, bool)
    if fits and low <= number and (high is None or number <= high):
        return
    shown = "a huge number" if fits and number.bit_length() > 64 else repr(value)
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"
    raise ConfigurationError(f"master option {name} must be a whole number {span}, not {shown}")


def _accepted(connection_class: type[Any]) -> set[str]:
    names: set[str] = set()
    for klass in connection_class.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters)
    return names


def _apply_overrides(connection_class: type[Any], kwargs: dict[str, Any]) -> None:
    """Settings we impose: no handshake beyond AUTH/SELECT, no hidden retries, RESP2, and
    UTF-8: the sync driver packs keys and tokens itself in UTF-8, so a client's other
    ``encoding`` would give the asyncio driver and the release listener other bytes for
    the same resource (two holders of one lock, waiters deaf to its release)."""
    accepted = _accepted(connection_class)
    wanted: dict[str, Any] = {
        "retry": Retry(redis.backoff.NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
        "protocol": 2,
        "decode_responses": False,
        "encoding": "utf-8",
        "encoding_errors": "strict",
    }
    # CLIENT SETINFO costs two round trips per connection: redis-py 8 skips it with
    # driver_info=None, earlier versions with lib_name/lib_version None.
    if "driver_info" in accepted:
        kwargs.pop("lib_name", None)
        kwargs.pop("lib_version", None)
        wanted["driver_info"] = None
    else:
        wanted["lib_name"] = wanted["lib_version"] = None
    kwargs.update({k: v for k, v in wanted.items() if k in accepted})


def parse_master(master: Any) -> MasterSpec:
    """One master, as URL, dict or client, into a :class:`MasterSpec`."""
    if isinstance(master, str):
        klass, kwargs = _from_url(master)
    elif isinstance(master, Mapping):
        klass, kwargs = _from_mapping(master)
    elif hasattr(master, "connection_pool"):
        klass, kwargs = _from_client(master)
    else:
        raise ConfigurationError(
            "a master must be a URL, a dict of redis-py arguments or a redis.Redis client,"
            f" not {type(master).__name__}"
        )
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith(_POOL_BOUND)}
    _apply_overrides(klass, kwargs)
    name, identity = _describe(kwargs, klass)
    return MasterSpec(name, identity, klass, kwargs)


def parse_masters(masters: Sequence[Any]) -> tuple[MasterSpec, ...]:
    """All masters, refusing none at all and the same server listed twice.

    Two databases of one server count as one master: they fail together, and counting
    them twice would let one process grant a quorum on its own.
    """
    if isinstance(masters, (str, bytes)) or not isinstance(masters, Sequence):
        raise ConfigurationError(
            f"masters must be a list of URLs, dicts or clients, not {type(masters).__name__}"
        )
    if not masters:
        raise ConfigurationError("at least one Redis master is needed (masters is empty)")
    specs = tuple(parse_master(m) for m in masters)
    seen: dict[tuple[str, ...], str] = {}
    for spec in specs:
        if spec.identity in seen:
            raise ConfigurationError(
                f"master {spec.name} is listed twice (as {seen[spec.identity]} too):"
                " a server would vote twice toward the quorum"
            )
        seen[spec.identity] = spec.name
    return specs


def seconds(value: Any, setting: str, *, allow_zero: bool = False) -> float:
    """A duration setting in seconds, from a number or a ``timedelta``, checked finite."""
    if type(value) is float and 0.0 < value < math.inf:
        return value  # the usual case, checked on every acquire: a settled, positive float
    total = value.total_seconds() if hasattr(value, "total_seconds") else value
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        raise ConfigurationError(
            f"{setting} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    bound = "at least 0" if allow_zero else "more than 0"
    try:
        total = float(total)
    except OverflowError:  # an int beyond a float (its digits may be too many to print)
        raise ConfigurationError(
            f"{setting} must be finite and {bound} seconds, got an int of"
            f" {int(total).bit_length()} bits"
        ) from None
    if math.isnan(total) or math.isinf(total) or total < 0 or (total == 0 and not allow_zero):
        raise ConfigurationError(f"{setting} must be finite and {bound} seconds, got {value!r}")
    return total


class Health:
    """A master's recent failures: after one, it is skipped until ``down_until``.

    Shared by every thread and task of one lock manager; skipping costs nothing to safety
    (a skipped master is simply a vote we do not have), and saves each round the full
    per-master timeout while a master is hung.
    """

    __slots__ = ("_lock", "down_until", "failures", "last_error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_until = 0.0
        self.failures = 0
        self.last_error = ""

    def skip_reason(self, now: float) -> str | None:
        if now >= self.down_until:
            return None
        return f"skipped for {self.down_until - now:.2f} s after: {self.last_error}"

    def failed(self, now: float, error: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error
            self.down_until = now + min(COOLDOWN_START * 2 ** (self.failures - 1), COOLDOWN_CAP)

    def succeeded(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0
                self.down_until = 0.0

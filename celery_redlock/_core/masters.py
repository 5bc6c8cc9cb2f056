"""Masters: how the user names them, how we connect to them, how we name them in messages.

Masters arrive as URLs (``redis://``, ``rediss://``, ``unix://``), as dicts of redis-py
client arguments, or as ready ``redis.Redis`` clients. All three become a
:class:`MasterSpec`: a connection class and its arguments, with *our* timeouts imposed
(a user's client with no socket timeout would otherwise let one hung master stall every
round forever), plus a redacted display name that is the only way a master is ever named
in an error, a log line or a repr.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.retry import Retry

from celery_redlock._core.connect import OPTIONS, Endpoint, endpoint_of, init_parameters
from celery_redlock.exceptions import ConfigurationError

logger = logging.getLogger("celery_redlock")


@dataclass(frozen=True, slots=True)
class MasterSpec:
    """How to open connections to one master, and how to name it without secrets."""

    name: str
    identity: tuple[str, ...]
    endpoint: Endpoint = field(repr=False)
    #: redis-py's connection class and arguments, for the admin commands' redis-py clients.
    connection_class: type[Any] = field(repr=False)
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


#: A URL's scheme, as far as it is one (``redis:``, also ``redis:/`` missing a slash).
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:")
#: A query parameter whose value may be a credential: redacted with everything after it.
_SECRET_PARAM = re.compile(
    r"([?&;][^=&;?#]*(?:pass|secret|token|auth|cred)[^=&;?#]*=).*", re.I | re.S
)


def redact(url: str) -> str:
    """``url`` without anything that may be a secret, however malformed the URL is.

    It is not parsed (a password with ``#``, ``/`` or ``?`` misleads every URL parser):
    everything up to the *last* ``@`` is user info, everything from the value of a query
    parameter named like a credential (``password=``) on is hidden too, a fragment is
    dropped, and a port that is not digits is hidden (``redis://:pw`` is a password read
    as a port). Where the two overlap (an ``@`` inside ``password=``), both are hidden.
    """
    text = str(url)
    scheme = _SCHEME.match(text)
    head = text[: scheme.end()] if scheme else ""
    rest = text[len(head) :]
    slashes = rest[: len(rest) - len(rest.lstrip("/"))]
    rest = rest[len(slashes) :]
    secret = _SECRET_PARAM.search(rest)
    cut = secret.end(1) if secret else len(rest)
    at = rest.rfind("@")
    visible, hash_, _fragment = rest[at + 1 : cut].partition("#")
    userinfo = "***@" if at >= 0 else ""
    hidden = "***" if hash_ or cut < len(rest) else ""
    return f"{head}{slashes}{userinfo}{_hide_port(visible)}{hidden}"


def _hide_port(body: str) -> str:
    """``host:port/...`` with a port that is not digits replaced by ``***``."""
    ends = [i for i in (body.find(c) for c in "/?") if i >= 0]
    end = min(ends, default=len(body))
    host, colon, port = body[:end].rpartition(":")
    if not colon or "]" in port or (port.isascii() and port.isdigit()):
        return body
    return f"{host}:***{body[end:]}"


def _describe(
    kwargs: Mapping[str, Any], connection_class: type[Any]
) -> tuple[str, tuple[str, ...]]:
    path = kwargs.get("path")
    db = kwargs.get("db", 0) or 0
    if path:
        return f"unix://{path}?db={db}", ("unix", os.path.realpath(str(path)))
    scheme = "rediss" if "SSL" in connection_class.__name__ else "redis"
    host = str(kwargs.get("host", "localhost"))
    port = int(kwargs.get("port", 6379))
    return f"{scheme}://{host}:{port}/{db}", ("tcp", canonical_host(host), str(port))


#: What a numeric IPv4 address may be written with (``127.1``, ``0x7f.0.0.1``): the forms
#: ``inet_aton`` (and so every resolver) reads as an address rather than a name.
_IPV4_LIKE = re.compile(r"[0-9a-fx.]+")


def canonical_host(host: str) -> str:
    """One spelling per host, as far as it can be told without asking DNS: addresses in
    their canonical form (short IPv4 forms, IPv4-mapped IPv6, brackets), names in lower
    case without a trailing dot, and every spelling of this machine (any loopback address,
    ``0.0.0.0``, ``::``, ``localhost``) as ``localhost``, since a server listening on all
    addresses answers on each of them. Names that resolve to one server stay apart here;
    the server's ``run_id`` (see :class:`Identities`) shows them as one when connecting."""
    name = host.strip().strip("[]").rstrip(".").lower()
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    try:
        address = ipaddress.ip_address(name.partition("%")[0])
    except ValueError:
        if _IPV4_LIKE.fullmatch(name):
            with contextlib.suppress(OSError):
                address = ipaddress.IPv4Address(socket.inet_aton(name))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is None:
        return name
    if address.is_loopback or address.is_unspecified:
        return "localhost"
    return str(address)


_SCHEMES = ("redis://", "rediss://", "unix://")


def _from_url(url: str) -> tuple[type[Any], dict[str, Any]]:
    if not url.strip():
        raise ConfigurationError(f"master URL must be a non-empty string, got {url!r}")
    if not url.startswith(_SCHEMES):
        raise ConfigurationError(
            f"master URL {redact(url)!r} must start with redis://, rediss:// or unix://"
        )
    try:
        _check_authority(url)
        pool = redis.ConnectionPool.from_url(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"master URL {redact(url)!r} cannot be parsed: {_reason(exc)}"
        ) from None
    return pool.connection_class, dict(pool.connection_kwargs)


def _check_authority(url: str) -> None:
    """Refuse a URL whose user info spills past its host part: a password with an
    unencoded ``/``, ``?`` or ``#`` makes every parser read part of it as the host, port,
    path or query, and connect somewhere else than meant."""
    netloc = urlsplit(url).netloc
    after = url.split("://", 1)[1]
    if url.startswith("unix://"):
        spilled = bool(netloc) and "@" not in netloc
    else:
        spilled = after.rfind("@") >= len(netloc)
    if spilled:
        raise ValueError(_SPILLED)


_SPILLED = (
    "its user name or password holds '/', '?', '#' or '@' unencoded (or a unix:// URL"
    " names a host): percent-encode them, urllib.parse.quote(password, safe='')"
)

#: Reasons redis-py and urllib give that quote nothing from the URL but a parameter name.
_SAFE_REASONS = re.compile(
    r"Invalid value for '\w+' in connection URL\.|Invalid IPv6 URL|Port out of range 0-65535"
)


def _reason(exc: BaseException) -> str:
    """Why a URL did not parse, in words that cannot carry its secrets: a parser's own
    text may quote any part of the URL (urllib quotes a bad port, which may be a
    password read as one), so only known texts pass."""
    text = str(exc)
    if text == _SPILLED or _SAFE_REASONS.fullmatch(text):
        return text
    if text.startswith("Port could not be cast"):
        return "its port is not a number"
    return f"{type(exc).__name__} (its text is withheld: it may quote the URL)"


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


def _apply_overrides(connection_class: type[Any], kwargs: dict[str, Any]) -> None:
    """Settings we impose: no handshake beyond AUTH/SELECT, no hidden retries, RESP2, and
    UTF-8: the sync driver packs keys and tokens itself in UTF-8, so a client's other
    ``encoding`` would give the asyncio driver and the release listener other bytes for
    the same resource (two holders of one lock, waiters deaf to its release)."""
    accepted = set(init_parameters(connection_class))
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
    endpoint = endpoint_of(klass, kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k in OPTIONS or k == "socket_timeout"}
    _apply_overrides(klass, kwargs)
    name, identity = _describe(kwargs, klass)
    return MasterSpec(name, identity, endpoint, klass, kwargs)


def parse_masters(masters: Sequence[Any]) -> tuple[MasterSpec, ...]:
    """All masters, refusing none at all and the same server listed twice.

    Two databases of one server count as one master: they fail together, and counting
    them twice would let one process grant a quorum on its own. Spellings are compared
    after :func:`canonical_host` (and unix socket paths after ``realpath``); what no
    spelling can reveal (a name and its address, a socket and its port) is caught by
    :class:`Identities` when the connections open.
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

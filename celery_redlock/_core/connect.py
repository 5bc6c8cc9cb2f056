"""Connections to a master that both drivers own end to end: where it listens, how to log
in, and how to open a socket (sync) or a stream (asyncio) to it.

redis-py parses the user's URL, dict or client into connection arguments (its public
``ConnectionPool.from_url`` and ``connection_pool.connection_kwargs``); from those we read a
fixed list into an :class:`Endpoint`, with redis-py's own defaults for what was not given,
and refuse what we cannot honour instead of ignoring it. Nothing here reaches into a
redis-py connection: the drivers write and read the sockets themselves (see ``resp``).

A new connection's log-in (AUTH, CLIENT SETNAME, SELECT) goes out in the same write as
its first call (:meth:`Endpoint.handshake`), so a connection costs one round trip, not four;
its replies are read first, and an error among them fails the connection with that error.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from celery_redlock.exceptions import ConfigurationError

__all__ = [
    "OPTIONS",
    "Endpoint",
    "command_name",
    "endpoint_of",
    "init_parameters",
    "open_socket",
    "open_stream",
    "refused",
    "unreachable",
]

#: The redis-py connection arguments we read (timeouts, encodings and retries are ours, see
#: ``masters``; anything else a client carries is per-pool machinery, and is dropped).
OPTIONS = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "client_name",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_check_hostname",
        "ssl_password",
        "ssl_min_version",
        "ssl_ciphers",
    }
)

#: Arguments we cannot honour with our own sockets: given a value other than redis-py's
#: default, they are refused by name rather than silently dropped.
_UNSUPPORTED = frozenset(
    {
        "redis_connect_func",
        "ssl_validate_ocsp",
        "ssl_validate_ocsp_stapled",
        "ssl_ocsp_context",
        "ssl_ocsp_expected_cert",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
        "socket_type",
    }
)

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One master's address and log-in, as our connections use them.

    ``path`` is set for a unix socket, else ``host`` and ``port``; ``tls`` is the context
    for ``rediss://`` (built once, when the masters are parsed, so that a missing
    certificate file is a configuration error, not an outage).
    """

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    credential_provider: Any = field(default=None, repr=False)
    client_name: str | None = None
    connect_timeout: float | None = None
    keepalive: bool = False
    keepalive_options: Mapping[int, int | bytes] = field(default_factory=dict)
    tls: ssl.SSLContext | None = field(default=None, repr=False)
    server_hostname: str | None = None

    def handshake(self) -> list[tuple[str | bytes | int, ...]]:
        """The commands a new connection sends before anything else: log in, name the
        connection, choose the database; each answers ``+OK`` or an error."""
        commands: list[tuple[str | bytes | int, ...]] = []
        username, password = self.username, self.password
        if self.credential_provider is not None:
            given = tuple(self.credential_provider.get_credentials())
            username, password = given if len(given) == 2 else (None, given[0])
        if password is not None:
            commands.append(
                ("AUTH", password) if username is None else ("AUTH", username, password)
            )
        if self.client_name:
            commands.append(("CLIENT", "SETNAME", self.client_name))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands

    def timeout(self, timeout: float) -> float:
        """How long a connect (TCP and TLS handshakes) may take: ours, or the user's if less."""
        given = self.connect_timeout
        return timeout if given is None else min(float(given), timeout)


def endpoint_of(connection_class: type[Any], kwargs: Mapping[str, Any]) -> Endpoint:
    """The :class:`Endpoint` for redis-py connection arguments, redis-py's defaults filling
    what is missing (a URL's arguments omit them; a client's carry them all)."""
    given = {**_defaults(connection_class), **kwargs}
    for name in sorted(_UNSUPPORTED):
        if kwargs.get(name) not in (None, False, [], ()):
            raise ConfigurationError(
                f"master option {name} is not supported: celery_redlock opens its own"
                " connections to the masters (leave it unset)"
            )
    options = given.get("socket_keepalive_options")
    tls = _tls_context(given) if issubclass(connection_class, redis.SSLConnection) else None
    return Endpoint(
        host=str(given.get("host") or "localhost"),
        port=int(given.get("port") or 6379),
        path=given.get("path"),
        db=int(given.get("db") or 0),
        username=given.get("username"),
        password=given.get("password"),
        credential_provider=given.get("credential_provider"),
        client_name=given.get("client_name"),
        connect_timeout=given.get("socket_connect_timeout"),
        keepalive=bool(given.get("socket_keepalive")),
        keepalive_options=dict(options) if isinstance(options, Mapping) else {},
        tls=tls,
        server_hostname=str(given.get("host")) if tls is not None else None,
    )


def _defaults(connection_class: type[Any]) -> dict[str, Any]:
    """redis-py's defaults for the arguments we read, as the connection class applies them."""
    return {
        name: param.default
        for name, param in init_parameters(connection_class).items()
        if name in OPTIONS and param.default is not inspect.Parameter.empty
    }


def init_parameters(klass: type[Any]) -> dict[str, inspect.Parameter]:
    """Every keyword ``klass(...)`` takes along its ``__init__`` chain, most derived last
    (so its default wins): what a redis-py connection class accepts, read from its
    signatures rather than from a list that each release could change."""
    params: dict[str, inspect.Parameter] = {}
    for base in reversed(klass.__mro__):
        init = base.__dict__.get("__init__")
        if init is not None:
            params.update(inspect.signature(init).parameters)
    return params


def _tls_context(given: Mapping[str, Any]) -> ssl.SSLContext:
    reqs = given.get("ssl_cert_reqs")
    if isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ConfigurationError(
                f"master option ssl_cert_reqs must be none, optional or required, not {reqs!r}"
            )
        reqs = _CERT_REQS[reqs.lower()]
    mode = ssl.CERT_REQUIRED if reqs is None else ssl.VerifyMode(reqs)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = bool(given.get("ssl_check_hostname")) and mode is not ssl.CERT_NONE
    context.verify_mode = mode
    try:
        cafile, capath, cadata = (
            given.get(k) for k in ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data")
        )
        if cafile or capath or cadata:
            context.load_verify_locations(cafile, capath, cadata)
        elif mode is not ssl.CERT_NONE:
            context.load_default_certs()
        if given.get("ssl_certfile"):
            context.load_cert_chain(
                given["ssl_certfile"], given.get("ssl_keyfile"), given.get("ssl_password")
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"master TLS files cannot be loaded: {exc}") from None
    if given.get("ssl_min_version") is not None:
        context.minimum_version = given["ssl_min_version"]
    if given.get("ssl_ciphers"):
        context.set_ciphers(given["ssl_ciphers"])
    return context


def open_socket(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected socket to the master (TLS handshake done), blocking, with ``timeout``
    set for the caller to change; raises OSError (ssl.SSLError, TimeoutError) on failure."""
    limit = endpoint.timeout(timeout)
    if endpoint.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(limit)
            sock.connect(endpoint.path)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=limit)
    try:
        _tune(sock, endpoint)
        if endpoint.tls is not None:
            sock = endpoint.tls.wrap_socket(sock, server_hostname=endpoint.server_hostname)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_stream(
    endpoint: Endpoint, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An asyncio stream to the master (TLS handshake done), within ``timeout``."""
    limit = endpoint.timeout(timeout)
    if endpoint.path is not None:
        return await asyncio.wait_for(asyncio.open_unix_connection(endpoint.path), limit)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.server_hostname,
            ssl_handshake_timeout=limit if endpoint.tls is not None else None,
        ),
        limit,
    )
    sock = writer.get_extra_info("socket")
    if sock is not None:
        _tune(sock, endpoint)
    return reader, writer


def unreachable(master: str, exc: BaseException) -> redis.RedisError:
    """A failed :func:`open_socket` or :func:`open_stream` to ``master`` (its redacted
    name), in one wording whichever opener failed: asyncio words a refused connection
    differently from ``socket``, so the text is made from the error number."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # distinct in 3.10
        return redis.TimeoutError(f"cannot connect to {master}: timed out")
    code = getattr(exc, "errno", None)
    if isinstance(exc, ssl.SSLError) or not isinstance(code, int) or code not in errno.errorcode:
        return redis.ConnectionError(f"cannot connect to {master}: {exc}")
    return redis.ConnectionError(f"cannot connect to {master}: [Errno {code}] {os.strerror(code)}")


def command_name(command: Sequence[Any]) -> str:
    """A command's name, never its arguments (AUTH's are secrets): ``CLIENT SETNAME``."""
    words = [str(w) for w in command[:2]]
    return " ".join(words) if words[0].upper() in _SUBCOMMANDS else words[0]


_SUBCOMMANDS = frozenset({"CLIENT", "SCRIPT"})


def refused(command: str, master: str, error: Exception) -> redis.ConnectionError:
    """The connection failure for an error reply to one of a new connection's commands
    (the log-in, or any of them answered NOAUTH); an authentication error keeps its class
    (AuthenticationError, as redis-py raised it)."""
    if isinstance(error, redis.ConnectionError):
        return type(error)(f"{command} refused by {master}: {error}")
    return redis.ConnectionError(f"{command} refused by {master}: {type(error).__name__}: {error}")


def _tune(sock: Any, endpoint: Endpoint) -> None:
    """No Nagle delay (a call is one small write awaiting its reply), and keep-alive with
    the user's options if asked."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if endpoint.keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in endpoint.keepalive_options.items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)

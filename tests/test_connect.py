"""The masters' connection arguments as our own sockets read them (celery_redlock._core.connect):
redis-py parses, we read a fixed list with redis-py's defaults, and refuse what we cannot honour."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import redis

from celery_redlock import ConfigurationError
from celery_redlock._core import resp
from celery_redlock._core.connect import open_socket, open_stream
from celery_redlock._core.masters import parse_master
from celery_redlock.testing import RedisServer


class Credentials:
    def __init__(self, *given: str) -> None:
        self.given = given

    def get_credentials(self) -> tuple[str, ...]:
        return self.given


@pytest.mark.parametrize(
    ("master", "handshake"),
    [
        ("redis://h:1/0", []),
        ("redis://:s3cret@h:1/2", [("AUTH", "s3cret"), ("SELECT", 2)]),
        ("redis://u:s3cret@h:1/0", [("AUTH", "u", "s3cret")]),
        ({"host": "h", "client_name": "me"}, [("CLIENT", "SETNAME", "me")]),
        ({"host": "h", "credential_provider": Credentials("u", "pw")}, [("AUTH", "u", "pw")]),
        ({"host": "h", "credential_provider": Credentials("pw")}, [("AUTH", "pw")]),
    ],
)
def test_a_new_connection_logs_in_names_itself_and_selects(
    master: Any, handshake: list[Any]
) -> None:
    assert parse_master(master).endpoint.handshake() == handshake


def test_the_password_is_not_in_the_endpoints_repr() -> None:
    assert "s3cret" not in repr(parse_master("redis://u:s3cret@h:1/0").endpoint)


@pytest.mark.parametrize(
    "options",
    [
        {"host": "h", "redis_connect_func": print},
        {"host": "h", "ssl": True, "ssl_validate_ocsp": True},
    ],
)
def test_an_option_our_sockets_cannot_honour_is_refused_by_name(options: dict[str, Any]) -> None:
    name = next(k for k in options if k not in ("host", "ssl"))
    with pytest.raises(ConfigurationError, match=name):
        parse_master(options)


def test_a_missing_tls_file_is_a_configuration_error_not_an_outage(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="TLS files"):
        parse_master(f"rediss://h:1/0?ssl_ca_certs={tmp_path / 'missing.pem'}")


def test_tls_follows_redis_py_defaults() -> None:
    context = parse_master("rediss://h:1/0").endpoint.tls
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    relaxed = parse_master("rediss://h:1/0?ssl_cert_reqs=none").endpoint.tls
    assert relaxed is not None
    assert relaxed.verify_mode is ssl.CERT_NONE
    assert not relaxed.check_hostname
    assert parse_master("redis://h:1/0").endpoint.tls is None


@pytest.mark.parametrize("how", ["tcp", "unix"])
def test_both_openers_reach_a_real_master_and_log_in(how: str, tmp_path: Any) -> None:
    path = tmp_path / "redis.sock"
    with RedisServer(password="s3cret", extra_args=["--unixsocket", str(path)]) as server:
        where = {"port": server.port} if how == "tcp" else {"unix_socket_path": str(path)}
        master = {**where, "password": "s3cret", "db": 1, "client_name": "t"}
        endpoint = parse_master(master).endpoint
        opening = b"".join(map(resp.pack, [*endpoint.handshake(), ("PING",)]))
        sock = open_socket(endpoint, 2.0)
        with sock:
            sock.sendall(opening)
            reader, replies = resp.new_reader(), list[Any]()
            while len(replies) <= len(endpoint.handshake()):
                reader.feed(sock.recv(4096))
                while (reply := reader.gets()) is not resp.INCOMPLETE:
                    replies.append(reply)
        assert replies == [b"OK"] * len(endpoint.handshake()) + [b"PONG"]

        async def ping() -> bytes:
            stream, writer = await open_stream(endpoint, 2.0)
            writer.write(opening)
            await writer.drain()
            answer = b"".join([await stream.readline() for _ in range(4)])
            writer.close()
            await writer.wait_closed()
            return answer

        assert asyncio.run(ping()) == b"+OK\r\n" * 3 + b"+PONG\r\n"


def test_a_refused_connection_is_an_os_error() -> None:
    with RedisServer() as server:
        port = server.port
    with pytest.raises(ConnectionRefusedError):
        open_socket(parse_master(redis.Redis(port=port)).endpoint, 1.0)

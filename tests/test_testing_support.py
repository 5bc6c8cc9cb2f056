"""The embedded servers and the fault proxy, against real redis-server processes.

Every server here is our own, on a free port: nothing touches the machine's Redis on 6379.
Timing assertions are lower bounds only (a loaded machine can always be slower).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import celery_redlock.testing
from celery_redlock.testing import (
    BINARY_ENV,
    FaultProxy,
    RedisGroup,
    RedisServer,
    RedisServerError,
    free_port,
    redis_server_binary,
    start_masters,
)
from celery_redlock.testing import servers as servers_module


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One server for the tests that do not harm it."""
    with RedisServer() as shared:
        yield shared


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", server.port)) as fresh:
        yield fresh


def via(proxy: FaultProxy, timeout: float = 1.0) -> redis.Redis:
    """A client through the proxy that fails fast instead of retrying."""
    return redis.Redis.from_url(
        proxy.url, socket_timeout=timeout, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    )


def ping_time(client: redis.Redis) -> float:
    started = time.perf_counter()
    assert client.ping()
    return time.perf_counter() - started


# -- the package --


def test_public_names_are_pinned() -> None:
    assert set(celery_redlock.testing.__all__) == {
        "BINARY_ENV", "FaultProxy", "RedisGroup", "RedisServer", "RedisServerError",
        "free_port", "redis_server_binary", "start_masters",
    }  # fmt: skip


def test_it_imports_nothing_from_celery() -> None:
    code = (
        "import sys, celery_redlock.testing\n"
        "print(','.join(m for m in sys.modules if m.split('.')[0] == 'celery'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- finding the binary, picking ports --


def test_the_binary_is_found_and_the_override_must_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = redis_server_binary()
    assert os.access(found, os.X_OK)
    monkeypatch.setenv(BINARY_ENV, found)
    assert redis_server_binary() == found
    monkeypatch.setenv(BINARY_ENV, str(tmp_path / "no-such-redis-server"))
    with pytest.raises(RedisServerError, match=BINARY_ENV):
        redis_server_binary()


def test_free_ports_are_free_and_never_6379() -> None:
    ports = {free_port() for _ in range(20)}
    assert 6379 not in ports
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", ports.pop()))


# -- one server --


def test_start_ping_stop(tmp_path: Path) -> None:
    server = RedisServer()
    with pytest.raises(RedisServerError):
        _ = server.port
    with server:
        assert server.running
        assert not server.paused
        assert server.port != 6379
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client() as client:
            assert client.ping()
        directory = server.directory
        server.stop()
        assert not server.running
        server.stop()  # idempotent
    assert not directory.exists()


def test_a_password_is_required_and_in_the_url() -> None:
    with RedisServer(password="p@ss:w/rd") as server:
        assert "p%40ss%3Aw%2Frd@" in server.url
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        with server.client() as client:
            assert client.ping()
        with (
            redis.Redis(
                port=server.port, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)
            ) as anonymous,
            pytest.raises(redis.AuthenticationError),
        ):
            anonymous.ping()


def test_a_server_that_cannot_start_says_why() -> None:
    server = RedisServer(extra_args=["--no-such-directive", "1"])
    try:
        with pytest.raises(RedisServerError, match="no-such-directive"):
            server.start()
        assert not server.running
    finally:
        server.close()


def test_a_lost_port_race_is_retried_on_another_port(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first port offered is taken by another redis, whose PONG must not fool us."""
    offers = iter([server.port])
    monkeypatch.setattr(servers_module, "free_port", lambda: next(offers, None) or free_port())
    with RedisServer() as late:
        assert late.port != server.port
        with late.client() as client:
            assert client.ping()


def test_kill_then_restart_on_the_same_port_loses_data_without_persistence() -> None:
    with RedisServer() as server:
        port = server.port
        with server.client() as client:
            client.set("k", "v")
        server.kill()
        assert not server.running
        with server.client() as client, pytest.raises(redis.ConnectionError):
            client.ping()
        server.restart()
        assert server.port == port
        with server.client() as client:
            assert client.get("k") is None


@pytest.mark.parametrize("crash", [False, True])
def test_appendonly_keeps_keys_across_restarts(crash: bool) -> None:
    with RedisServer(appendonly=True) as server:
        with server.client() as client:
            client.set("k", "v")
        if crash:
            server.kill()  # appendfsync always: an acknowledged write survives a crash
        server.restart()
        with server.client() as client:
            assert client.get("k") == b"v"


def test_pause_hangs_the_server_and_resume_recovers() -> None:
    with RedisServer() as server:
        server.pause()
        assert server.paused
        assert server.running
        with server.client(socket_timeout=0.2) as client:
            with pytest.raises(redis.TimeoutError):
                client.ping()
            server.resume()
            assert not server.paused
            assert client.ping()


def test_a_paused_server_still_stops_promptly() -> None:
    server = RedisServer().start()
    server.pause()
    server.close()
    assert not server.running
    assert not server.paused


# -- groups --


def test_a_group_starts_distinct_servers_and_stops_them_all() -> None:
    with RedisGroup(4) as group:
        assert len(group) == 4
        assert len(set(group.ports)) == 4
        assert group.urls == [server.url for server in group]
        for server in group:
            with server.client() as client:
                assert client.ping()
        group[0].kill()
    assert not any(server.running for server in group.servers)


def test_a_group_that_fails_to_start_leaves_nothing_running() -> None:
    group = RedisGroup(3, extra_args=["--no-such-directive", "1"])
    with pytest.raises(RedisServerError):
        group.start()
    assert not any(server.running for server in group)


def test_start_masters_yields_a_list() -> None:
    with start_masters(2, password="secret") as masters:
        assert [server.password for server in masters] == ["secret", "secret"]
        with masters[1].client() as client:
            assert client.ping()
    assert not masters[0].running


# -- the proxy --


def test_the_proxy_forwards_many_connections(proxy: FaultProxy) -> None:
    errors: list[BaseException] = []

    def talk(n: int) -> None:
        try:
            with via(proxy) as client:
                for i in range(20):
                    client.set(f"proxy:{n}", i)
                    assert client.get(f"proxy:{n}") == str(i).encode()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert proxy.port != 6379


def test_the_proxy_preserves_large_payloads_and_order_under_delay(proxy: FaultProxy) -> None:
    proxy.delay = 0.002
    value = os.urandom(3 * 1024 * 1024)
    with via(proxy, timeout=5.0) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(50):
            pipe.rpush("proxy:order", i)
        pipe.set("proxy:big", value).get("proxy:big").lrange("proxy:order", 0, -1)
        *_, got, order = pipe.execute()
        client.delete("proxy:big", "proxy:order")
    assert got == value
    assert order == [str(i).encode() for i in range(50)]


def test_delay_adds_latency_each_way(proxy: FaultProxy) -> None:
    proxy.delay = 0.005
    with via(proxy) as client:
        assert min(ping_time(client) for _ in range(5)) >= 0.008
        proxy.delay = 0.0
        assert client.ping()
    with pytest.raises(ValueError, match="delay"):
        proxy.delay = -1.0


def test_blackhole_hangs_connections_and_heal_restores_them(proxy: FaultProxy) -> None:
    with via(proxy, timeout=0.2) as client:
        assert client.ping()
        proxy.blackhole()
        assert proxy.blackholed
        with pytest.raises(redis.TimeoutError):
            client.ping()
        with via(proxy, timeout=0.2) as newcomer, pytest.raises(redis.TimeoutError):
            newcomer.ping()  # still accepted, never answered
        proxy.heal()
        assert not proxy.blackholed
        assert client.ping()


def test_drop_connections_resets_existing_ones_only(proxy: FaultProxy) -> None:
    # A raw socket: redis-py would quietly reconnect an idle connection that was reset.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=1.0) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(64) == b"+PONG\r\n"
        assert proxy.connections == 1
        proxy.drop_connections()
        assert proxy.connections == 0
        with pytest.raises(ConnectionResetError):
            raw.recv(64)
    with via(proxy) as client:
        assert client.ping()  # new connections go through


def test_a_slow_reader_does_not_hold_up_other_connections(proxy: FaultProxy) -> None:
    with via(proxy) as client:
        client.set("proxy:slow", b"x" * (1024 * 1024))
        with socket.create_connection(("127.0.0.1", proxy.port)) as hog:
            hog.sendall(b"GET proxy:slow\r\n" * 30)  # 30 MB of replies it never reads
            for _ in range(20):
                assert client.ping()
        client.delete("proxy:slow")


def test_a_dead_target_refuses_through_the_proxy() -> None:
    server = RedisServer().start()
    with FaultProxy(("127.0.0.1", server.port)) as proxy:
        server.close()
        with via(proxy) as client, pytest.raises(redis.ConnectionError):
            client.ping()


def test_the_proxy_survives_a_target_restart() -> None:
    with (
        RedisServer() as server,
        FaultProxy(("127.0.0.1", server.port)) as proxy,
        via(proxy) as client,
    ):
        assert client.ping()
        server.restart()
        assert client.ping()  # on a new connection: the old one died with the process

"""The embedded servers and the fault proxy, against real redis-server processes.

Every server here is our own, on a free port: nothing touches the machine's Redis on 6379.
Timing assertions are lower bounds only (a loaded machine can always be slower), and a
timeout is either one expected to fire (``HANG``: nothing is coming) or a bound on a hang
that is far above any load (``LIVENESS``), so a busy machine never fails a test.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
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
    ProxyError,
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


HANG = 0.2  # seconds we wait to see that nothing comes (a hang or a blackhole)
LIVENESS = 10.0  # seconds after which a reply that should come is taken to be lost


def via(proxy: FaultProxy, timeout: float = LIVENESS) -> redis.Redis:
    """A client through the proxy that fails at once instead of retrying."""
    return redis.Redis.from_url(
        proxy.url, socket_timeout=timeout, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    )


def nothing_comes(sock: socket.socket) -> bool:
    """Nothing arrives on ``sock`` for ``HANG`` seconds (then it waits ``LIVENESS`` again)."""
    sock.settimeout(HANG)
    try:
        sock.recv(64)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(LIVENESS)
    return False


def ping_time(client: redis.Redis) -> float:
    started = time.perf_counter()
    assert client.ping()
    return time.perf_counter() - started


# -- the package --


def test_public_names_are_pinned() -> None:
    assert set(celery_redlock.testing.__all__) == {
        "BINARY_ENV", "FaultProxy", "ProxyError", "RedisGroup", "RedisServer", "RedisServerError",
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
        with socket.create_connection(("127.0.0.1", server.port), timeout=LIVENESS) as raw:
            raw.sendall(b"PING\r\n")
            assert nothing_comes(raw)
            server.resume()
            assert not server.paused
            assert raw.recv(64) == b"+PONG\r\n"  # what queued up meanwhile is answered


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
    with via(proxy) as client:
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
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=LIVENESS) as held:
        held.sendall(b"PING\r\n")
        assert held.recv(64) == b"+PONG\r\n"
        proxy.blackhole()
        assert proxy.blackholed
        held.sendall(b"PING\r\n")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=LIVENESS) as newcomer:
            newcomer.sendall(b"PING\r\n")  # still accepted, never answered
            assert nothing_comes(held)
            assert nothing_comes(newcomer)
            proxy.heal()
            assert not proxy.blackholed
            assert held.recv(64) == b"+PONG\r\n"  # the held bytes flow again
            assert newcomer.recv(64) == b"+PONG\r\n"


def test_drop_connections_resets_existing_ones_only(proxy: FaultProxy) -> None:
    # A raw socket: redis-py would quietly reconnect an idle connection that was reset.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=LIVENESS) as raw:
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


# -- the proxy's own failures: recorded, raised to the next caller, never silent --


def open_descriptors() -> dict[int, str]:
    """This process's file descriptors and what each refers to (``socket:[inode]``...)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the one listdir itself used is gone already
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def started_with_its_descriptors(proxy: FaultProxy) -> dict[int, str]:
    """Start ``proxy``; the descriptors that start opened (its listener, waker, epoll)."""
    before = open_descriptors()
    proxy.start()
    return {fd: what for fd, what in open_descriptors().items() if before.get(fd) != what}


def clobber_the_loops_selector(descriptors: dict[int, str]) -> None:
    """Put /dev/null where the loop's epoll descriptor was, as a neighbour's stray close
    and reuse of the number would: the loop's next epoll call fails with EINVAL. (dup2,
    not close: the loop still closes that number itself, and nothing else then owns it.)"""
    [epoll] = [fd for fd, what in descriptors.items() if what == "anon_inode:[eventpoll]"]
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, epoll)
    finally:
        os.close(null)


def fail_the_loop(proxy: FaultProxy, descriptors: dict[int, str]) -> None:
    """Clobber the selector, then connect: the loop fails at its next epoll call (at the
    latest, registering this connection) and closes its listener and connections as it
    ends, so a refused, reset or closed connection says the failure has happened."""
    clobber_the_loops_selector(descriptors)
    try:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=LIVENESS)
    except (ConnectionRefusedError, ConnectionResetError):
        return  # it had failed already, and closed its listener
    with raw:
        assert hung_up(raw)


def hung_up(sock: socket.socket) -> bool:
    """The peer closed: EOF, or a reset (a connection still in the listener's backlog)."""
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


@needs_proc
def test_a_loop_failure_is_raised_to_the_next_call_and_to_stop(server: RedisServer) -> None:
    proxy = FaultProxy(("127.0.0.1", server.port))
    descriptors = started_with_its_descriptors(proxy)
    fail_the_loop(proxy, descriptors)
    for call in (proxy.blackhole, proxy.heal, proxy.drop_connections, lambda: proxy.connections):
        with pytest.raises(ProxyError, match="loop failed with OSError") as err:
            call()
        assert isinstance(err.value.__cause__, OSError)
        assert err.value.__cause__.errno == errno.EINVAL
    with pytest.raises(ProxyError, match="loop failed"):
        proxy.delay = 0.01
    for _ in range(2):  # after the loop ended, and again: the same error, nothing worse
        with pytest.raises(ProxyError, match="loop failed with OSError"):
            proxy.stop()
    still_open = {
        fd: what for fd, what in open_descriptors().items() if descriptors.get(fd) == what
    }
    assert still_open == {}  # the listener, the waker and the selector are all closed


@needs_proc
def test_a_call_that_meets_the_failure_raises_it_and_the_loop_ends(server: RedisServer) -> None:
    proxy = FaultProxy(("127.0.0.1", server.port))
    descriptors = started_with_its_descriptors(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=LIVENESS) as raw:
        raw.sendall(b"PING\r\n")
        assert raw.recv(64) == b"+PONG\r\n"
        proxy.blackhole()  # the connection's sockets leave the selector
        clobber_the_loops_selector(descriptors)
        with pytest.raises(ProxyError, match="loop failed with OSError") as err:
            proxy.heal()  # ... and fail to come back: heal's effect cannot hold
        assert isinstance(err.value.__cause__, OSError)
        assert hung_up(raw)  # the loop ended, closing what it carried
    with pytest.raises(ProxyError):
        proxy.stop()


def stop_from(threads: int, proxy: FaultProxy, go: threading.Barrier) -> list[object]:
    """What ``proxy.stop()`` returned or raised in each of ``threads`` threads."""
    outcomes: list[object] = []

    def stop() -> None:
        go.wait()
        try:
            proxy.stop()
        except BaseException as exc:  # judged by the caller
            outcomes.append(exc)
        else:
            outcomes.append(None)

    stoppers = [threading.Thread(target=stop) for _ in range(threads)]
    for thread in stoppers:
        thread.start()
    go.wait()
    with contextlib.suppress(OSError):  # the proxy may have stopped listening already
        socket.create_connection(("127.0.0.1", proxy.port), timeout=LIVENESS).close()
    for thread in stoppers:
        thread.join()
    return outcomes


@needs_proc
def test_concurrent_stops_during_a_loop_failure_end_it_cleanly(server: RedisServer) -> None:
    """Four threads stop the proxy as its loop fails: each returns or raises ProxyError
    (whichever came first), none sees EBADF from a waker the loop closed, none hangs."""
    for _ in range(10):  # interleavings vary from round to round
        proxy = FaultProxy(("127.0.0.1", server.port))
        clobber_the_loops_selector(started_with_its_descriptors(proxy))
        outcomes = stop_from(4, proxy, threading.Barrier(5))
        assert len(outcomes) == 4
        assert all(o is None or isinstance(o, ProxyError) for o in outcomes), outcomes
        with contextlib.suppress(ProxyError):
            proxy.stop()
        assert proxy.port  # and a stopped proxy may be started again
        proxy.start().stop()


def test_a_target_resetting_mid_reply_is_passed_on_not_a_proxy_failure() -> None:
    """A per-connection fault is the client's to see; the loop carries on."""
    with socket.create_server(("127.0.0.1", 0)) as target:
        port = target.getsockname()[1]

        def half_a_reply_then_reset() -> None:
            conn, _ = target.accept()
            conn.recv(64)
            conn.sendall(b"$10\r\nhalf")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

        serving = threading.Thread(target=half_a_reply_then_reset)
        serving.start()
        with FaultProxy(("127.0.0.1", port)) as proxy, via(proxy) as client:
            with pytest.raises(redis.ConnectionError):
                client.get("k")
            serving.join()
            assert proxy.connections == 0
            proxy.blackhole()  # the loop still runs calls
            proxy.heal()

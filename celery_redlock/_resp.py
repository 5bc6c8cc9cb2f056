"""The Redis wire format (RESP) as the sync driver speaks it: commands packed once per round,
replies parsed from bytes the driver read itself from a non-blocking socket.

Why not redis-py's parser: it reads from the socket on its own, blocking up to the socket
timeout, and a socket with a timeout makes Python poll before every send and receive.
The driver already polls all masters at once, so its sockets are non-blocking and the
parsing is fed by hand: hiredis's reader when installed, else :class:`PyReader`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis._parsers.base import BaseParser
from redis.exceptions import InvalidResponse

try:
    import hiredis

    HIREDIS = True
except ImportError:  # pragma: no cover - hiredis is an optional extra
    HIREDIS = False

__all__ = ["INCOMPLETE", "PyReader", "Reader", "error_reply", "new_reader", "pack"]


class _Incomplete:
    """What ``gets()`` returns until a whole reply is buffered (a reply can be False)."""

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Any = _Incomplete()


def error_reply(message: str) -> Exception:
    """redis-py's exception for an error reply (its own mapping of error codes)."""
    error: Exception = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


class Reader(Protocol):
    def feed(self, data: bytes, /) -> None: ...
    def gets(self) -> Any: ...


def new_reader() -> Reader:
    """A reader for one connection: hiredis's if installed, else the pure-Python one.

    Error replies come back as redis-py's exceptions (``NOAUTH`` as AuthenticationError,
    ``NOSCRIPT`` as NoScriptError...), returned, not raised, so that one master's error is
    a vote like any other.
    """
    if HIREDIS:
        reader: Reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=error_reply, notEnoughData=INCOMPLETE
        )
        return reader
    return PyReader()


def pack(args: Sequence[str | bytes | int]) -> bytes:
    """One command as a RESP array of bulk strings."""
    data = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in args]
    return b"*%d\r\n" % len(data) + b"".join([b"$%d\r\n%s\r\n" % (len(d), d) for d in data])


class PyReader:
    """A RESP2 reader (plus RESP3's null, boolean and double), for replies to the few
    commands the driver sends; anything else is a protocol error."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes, /) -> None:
        self._buf += data

    def gets(self) -> Any:
        parsed = self._parse(0)
        if parsed is None:
            return INCOMPLETE
        reply, end = parsed
        del self._buf[:end]
        return reply

    def _parse(self, pos: int) -> tuple[Any, int] | None:
        """The reply starting at ``pos`` and where it ends, or None if not all here yet."""
        buf = self._buf
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        kind, line, after = buf[pos], bytes(buf[pos + 1 : eol]), eol + 2
        try:
            simple = _SIMPLE.get(kind)
            if simple is not None:
                return simple(line), after
            size = int(line)
        except ValueError:
            raise InvalidResponse(f"protocol error: {bytes(buf[pos:eol])!r}") from None
        if size < 0 and kind in (_BULK, _ARRAY):
            return None, after  # RESP2's null bulk string and null array
        if kind == _BULK:
            end = after + size
            return (bytes(buf[after:end]), end + 2) if len(buf) >= end + 2 else None
        if kind == _ARRAY:
            items = []
            for _ in range(size):
                parsed = self._parse(after)
                if parsed is None:
                    return None
                item, after = parsed
                items.append(item)
            return items, after
        raise InvalidResponse(f"protocol error: unexpected reply type {bytes([kind])!r}")


_BULK, _ARRAY = ord("$"), ord("*")

#: One-line replies: simple string, error, integer, and RESP3's null, boolean and double.
_SIMPLE: dict[int, Callable[[bytes], Any]] = {
    ord("+"): lambda line: line,
    ord("-"): lambda line: error_reply(line.decode(errors="replace")),
    ord(":"): int,
    ord("_"): lambda _line: None,
    ord("#"): lambda line: line == b"t",
    ord(","): float,
}

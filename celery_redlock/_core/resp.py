"""The Redis wire format (RESP) as the sync driver speaks it: commands packed once per round,
replies parsed from bytes the driver read itself from a non-blocking socket.

Why not redis-py's parser: it reads from the socket on its own, blocking up to the socket
timeout, and a socket with a timeout makes Python poll before every send and receive.
The driver already polls all masters at once, so its sockets are non-blocking and the
parsing is fed by hand: hiredis's reader when installed, else :class:`PyReader`.

Error replies become redis-py's public exception classes (:func:`error_reply`), chosen by
our own table of error codes: the mapping redis-py applies lives in a private module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    ExecAbortError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

try:
    import hiredis

    HIREDIS = True
except ImportError:  # pragma: no cover - hiredis is an optional extra
    HIREDIS = False

__all__ = [
    "INCOMPLETE",
    "PyReader",
    "Reader",
    "error_reply",
    "new_reader",
    "pack",
    "pack_head",
    "pack_rest",
]


class _Incomplete:
    """What ``gets()`` returns until a whole reply is buffered (a reply can be False)."""

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Any = _Incomplete()


#: Error codes (an error reply's first word) and the exception each becomes, as redis-py
#: maps them (the same in redis-py 5.0 and 8.x); the code is dropped from the text.
#: Any other code is a ResponseError with the whole text (MOVED, ASK: we talk to masters).
_CODES: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "WRONGPASS": AuthenticationError,
    "NOAUTH": AuthenticationError,
    "NOPERM": NoPermissionError,
    "READONLY": ReadOnlyError,
    "LOADING": BusyLoadingError,
    "OOM": OutOfMemoryError,
    "EXECABORT": ExecAbortError,
}

#: ``ERR`` replies that redis-py tells apart by their whole text; other ERR replies are
#: ResponseErrors (the ``ERR`` dropped too).
_ERR_TEXTS: dict[str, type[RedisError]] = {
    "max number of clients reached": RedisConnectionError,
    "invalid password": AuthenticationError,
    "wrong number of arguments for 'auth' command": AuthenticationWrongNumberOfArgsError,
    "wrong number of arguments for 'AUTH' command": AuthenticationWrongNumberOfArgsError,
    # AUTH sent to a server without a password: Redis 6 and later, then Redis 5.
    "AUTH <password> called without any password configured for the default user."
    " Are you sure your configuration is correct?": AuthenticationError,
    "Client sent AUTH, but no password is set": AuthenticationError,
}


def error_reply(message: str) -> RedisError:
    """The redis-py exception for an error reply's text (``NOSCRIPT ...`` is NoScriptError,
    ``WRONGPASS ...`` AuthenticationError...), as redis-py's parsers make it."""
    code, _, rest = message.partition(" ")
    if code == "ERR":
        return _ERR_TEXTS.get(rest, ResponseError)(rest)
    known = _CODES.get(code)
    return ResponseError(message) if known is None else known(rest)


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
    return pack_rest(b"*%d\r\n" % len(args), [_encode(arg) for arg in args])


def pack_head(count: int, leading: Sequence[str | bytes | int]) -> bytes:
    """The packed start of a command of ``count`` arguments that begins with ``leading``:
    made once, for a caller that then packs only the rest with :func:`pack_rest`."""
    return pack_rest(b"*%d\r\n" % count, [_encode(arg) for arg in leading])


def pack_rest(head: bytes, parts: list[bytes]) -> bytes:
    """``head`` (from :func:`pack_head`) followed by ``parts`` as bulk strings: the one
    place the bulk-string format is written."""
    return head + b"".join([b"$%d\r\n%s\r\n" % (len(part), part) for part in parts])


def _encode(arg: str | bytes | int) -> bytes:
    return arg if isinstance(arg, bytes) else str(arg).encode()


#: Deepest nesting of arrays a reply may have: ours have one level, RESP3 pushes two.
MAX_DEPTH = 8

#: Longest bulk string Redis can send (its ``proto-max-bulk-len`` ceiling, 512 MB).
MAX_BULK = 512 * 1024 * 1024

#: Most elements an array may announce (hiredis's limit).
MAX_ARRAY = 2**32 - 1


class PyReader:
    """A RESP2 reader (plus RESP3's null, boolean and double), for replies to the few
    commands the driver sends; anything else is a protocol error.

    Iterative and resumable: ``gets`` parses what is buffered once, keeping the arrays
    still open on a stack and the position it reached, so a reply fed in many pieces
    costs its length, not its length times the pieces, and a deeply nested reply from a
    misbehaving master is a protocol error (past :data:`MAX_DEPTH`), not a RecursionError.
    """

    __slots__ = ("_buf", "_pos", "_scanned", "_stack")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # where the next element starts in _buf
        self._scanned = 0  # _buf up to here holds no CRLF at or after _pos
        self._stack: list[tuple[int, list[Any]]] = []  # open arrays: (items announced, items)

    def feed(self, data: bytes, /) -> None:
        self._buf += data

    def gets(self) -> Any:
        stack = self._stack
        while True:
            item = self._element()
            if item is INCOMPLETE:
                return INCOMPLETE
            while True:
                if not stack:
                    del self._buf[: self._pos]
                    self._pos = self._scanned = 0
                    return item
                size, items = stack[-1]
                items.append(item)
                if len(items) < size:
                    break  # the array goes on: read its next element
                stack.pop()
                item = items

    def _element(self) -> Any:
        """The next whole scalar, null or empty array, or INCOMPLETE; arrays it meets on the
        way are opened on the stack (their elements follow). A line not all here yet is
        searched again only from where the last search stopped."""
        buf = self._buf
        while True:
            pos = self._pos
            eol = buf.find(b"\r\n", pos if self._scanned <= pos else self._scanned - 1)
            if eol < 0:
                self._scanned = len(buf)
                return INCOMPLETE
            self._pos = eol + 2
            kind, body = buf[pos], bytes(buf[pos + 1 : eol])
            simple = _SIMPLE.get(kind)
            try:
                if simple is not None:
                    return simple(body)
                size = int(body) if kind in _SIZED else _unknown(kind)
            except ValueError:
                raise InvalidResponse(f"protocol error: {bytes([kind]) + body!r}") from None
            if size < -1 or size > (MAX_BULK if kind == _BULK else MAX_ARRAY):
                raise InvalidResponse(f"protocol error: length {size} out of range")
            if kind == _BULK:
                return self._bulk(pos, size)
            if size <= 0:
                return None if size < 0 else []  # RESP2's null array, or an empty one
            if len(self._stack) >= MAX_DEPTH:
                raise InvalidResponse(f"protocol error: arrays nested deeper than {MAX_DEPTH}")
            self._stack.append((size, []))

    def _bulk(self, header: int, size: int) -> Any:
        """The bulk string whose ``size`` was just read (from the line at ``header``)."""
        if size < 0:
            return None
        begin = self._pos
        end = begin + size
        if len(self._buf) < end + 2:
            self._pos = header  # read the header again once the data is here
            return INCOMPLETE
        if self._buf[end : end + 2] != b"\r\n":
            raise InvalidResponse("protocol error: bulk string not ended by CRLF")
        self._pos = end + 2
        return bytes(self._buf[begin:end])


def _unknown(kind: int) -> int:
    raise InvalidResponse(f'Protocol error, got "{chr(kind)}" as reply type byte')


_BULK, _ARRAY = ord("$"), ord("*")
_SIZED = (_BULK, _ARRAY)

#: One-line replies: simple string, error, integer, and RESP3's null, boolean and double.
_SIMPLE: dict[int, Callable[[bytes], Any]] = {
    ord("+"): lambda line: line,
    ord("-"): lambda line: error_reply(line.decode(errors="replace")),
    ord(":"): int,
    ord("_"): lambda _line: None,
    ord("#"): lambda line: line == b"t",
    ord(","): float,
}

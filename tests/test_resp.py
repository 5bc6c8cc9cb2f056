"""The sync driver's wire format: packing commands, and the pure-Python reply reader used
when hiredis is not installed (checked against hiredis's on the same bytes), then the whole
driver on the pure reader against real masters."""

from __future__ import annotations

import uuid
from typing import Any

import hiredis
import pytest
import redis
from redis.exceptions import InvalidResponse, RedisError

from celery_redlock import Redlock
from celery_redlock._core import resp
from celery_redlock._core.protocol import Call, Verb
from celery_redlock._core.resp import INCOMPLETE, PyReader, error_reply, pack
from celery_redlock.testing import RedisGroup

REPLIES = [
    b"+OK\r\n",
    b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    b"-NOAUTH Authentication required.\r\n",
    b"-ERR unknown command\r\n",
    b":0\r\n",
    b":-2\r\n",
    b"$5\r\nab\r\nc\r\n",  # a bulk string may hold CRLF
    b"$0\r\n\r\n",
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*2\r\n:1\r\n:29999\r\n",
    b"*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n-ERR inner\r\n",
    b"_\r\n",
    b"#t\r\n",
    b"#f\r\n",
    b",1.5\r\n",
]


def _normal(reply: Any) -> Any:
    """Error replies compared by type and text (instances never compare equal)."""
    if isinstance(reply, RedisError):
        return (type(reply).__name__, str(reply))
    if isinstance(reply, list):
        return [_normal(r) for r in reply]
    return reply


def _hiredis() -> Any:
    return hiredis.Reader(
        protocolError=InvalidResponse, replyError=error_reply, notEnoughData=INCOMPLETE
    )


@pytest.mark.parametrize("data", REPLIES)
def test_the_pure_reader_agrees_with_hiredis(data: bytes) -> None:
    ours, theirs = PyReader(), _hiredis()
    ours.feed(data)
    theirs.feed(data)
    assert _normal(ours.gets()) == _normal(theirs.gets())
    assert ours.gets() is INCOMPLETE


@pytest.mark.parametrize("data", REPLIES)
def test_a_reply_split_anywhere_is_whole_only_at_its_end(data: bytes) -> None:
    for cut in range(1, len(data)):
        reader = PyReader()
        reader.feed(data[:cut])
        assert reader.gets() is INCOMPLETE, cut
        reader.feed(data[cut:])
        assert _normal(reader.gets()) == _normal(_parse_whole(data))


def _parse_whole(data: bytes) -> Any:
    reader = _hiredis()
    reader.feed(data)
    return reader.gets()


def test_replies_come_out_one_at_a_time_in_order() -> None:
    reader = PyReader()
    reader.feed(b"".join(REPLIES))
    got = [reader.gets() for _ in REPLIES]
    assert [_normal(g) for g in got] == [_normal(_parse_whole(r)) for r in REPLIES]
    assert reader.gets() is INCOMPLETE


@pytest.mark.parametrize("data", [b"?what\r\n", b":12x\r\n", b"$abc\r\n", b"%1\r\n"])
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    reader = PyReader()
    reader.feed(data)
    with pytest.raises(InvalidResponse):
        reader.gets()


#: Error replies and the redis-py exception each becomes, with its text (redis-py's mapping).
ERRORS = [
    ("NOSCRIPT No matching script.", redis.exceptions.NoScriptError, "No matching script."),
    (
        "WRONGPASS invalid username-password pair or user is disabled.",
        redis.AuthenticationError,
        "invalid username-password pair or user is disabled.",
    ),
    ("NOAUTH Authentication required.", redis.AuthenticationError, "Authentication required."),
    ("NOPERM no permissions", redis.exceptions.NoPermissionError, "no permissions"),
    ("READONLY You can't write", redis.ReadOnlyError, "You can't write"),
    ("LOADING Redis is loading", redis.BusyLoadingError, "Redis is loading"),
    ("OOM command not allowed", redis.exceptions.OutOfMemoryError, "command not allowed"),
    ("EXECABORT Transaction discarded", redis.exceptions.ExecAbortError, "Transaction discarded"),
    ("ERR invalid password", redis.AuthenticationError, "invalid password"),
    ("ERR max number of clients reached", redis.ConnectionError, "max number of clients reached"),
    (
        "ERR wrong number of arguments for 'auth' command",
        redis.exceptions.AuthenticationWrongNumberOfArgsError,
        "wrong number of arguments for 'auth' command",
    ),
    (
        "ERR Client sent AUTH, but no password is set",
        redis.AuthenticationError,
        "Client sent AUTH, but no password is set",
    ),
    ("ERR DB index is out of range", redis.ResponseError, "DB index is out of range"),
    ("ERR", redis.ResponseError, ""),
    ("MOVED 3999 127.0.0.1:6381", redis.ResponseError, "MOVED 3999 127.0.0.1:6381"),
    ("WRONGTYPE Operation against a key", redis.ResponseError, "WRONGTYPE Operation against a key"),
]


@pytest.mark.parametrize(("message", "kind", "text"), ERRORS)
def test_an_error_reply_is_redis_pys_public_exception(
    message: str, kind: type[Exception], text: str
) -> None:
    """By its code, as redis-py maps it (the code dropped from the text); an unknown code
    is a ResponseError with the whole text. The same from either reader."""
    error = error_reply(message)
    assert type(error) is kind
    assert str(error) == text
    for reader in (PyReader(), _hiredis()):
        reader.feed(b"-%s\r\n" % message.encode())
        assert _normal(reader.gets()) == (kind.__name__, text)


def test_pack_matches_redis_py() -> None:
    args: tuple[Any, ...] = ("EVALSHA", "ab" * 20, 2, "redlock:x", b"\x00bin", "tok\u00e9n", 30000)
    conn = redis.Connection()  # type: ignore[no-untyped-call]
    assert pack(args) == b"".join(conn.pack_command(*args))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("verb", list(Verb))
@pytest.mark.parametrize("key", ["redlock:x", "redlock:k\u00e9y \u2603 \r\n", ""])
def test_a_call_packed_once_per_verb_is_its_command_packed(verb: Verb, key: str) -> None:
    """Call.packed builds EVALSHA's head once per verb; it must send exactly the bytes
    packing the whole command would."""
    call = Call(verb, key, "t0k3n:own\u00e9r", 30000, 2500)
    assert call.packed() == pack(call.command())


def test_the_driver_on_the_pure_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Acquire, contention, extend, holder, a NOSCRIPT error reply and release, end to end
    with hiredis switched off."""
    monkeypatch.setattr(resp, "HIREDIS", False)
    resource = f"test:{uuid.uuid4().hex}"
    with RedisGroup(3) as masters, Redlock(masters.urls) as dlm:
        assert isinstance(dlm._driver.links()[0].reader, PyReader)
        lock = dlm.acquire(resource, 5, owner="me")
        assert lock is not None
        assert dlm.acquire(resource, 5) is None
        assert dlm.holder(resource) == "me"
        for server in masters:
            with server.client() as client:
                client.script_flush()
        assert lock.extend(5) > 4
        assert lock.release()
        assert not dlm.locked(resource)


@pytest.mark.parametrize("depth", [9, 100_000])
def test_a_reply_nested_too_deep_is_a_protocol_error_not_a_recursion_error(depth: int) -> None:
    reader = PyReader()
    reader.feed(b"*1\r\n" * depth + b":1\r\n")
    with pytest.raises(InvalidResponse, match="nested deeper than 8"):
        reader.gets()


def test_nesting_up_to_the_bound_reads_as_hiredis_reads_it() -> None:
    data = b"*2\r\n" * 8 + b":1\r\n" + b":2\r\n" * 8
    ours = PyReader()
    ours.feed(data)
    assert ours.gets() == _parse_whole(data)


@pytest.mark.parametrize(
    "data",
    [b"$-2\r\n", b"*-2\r\n", b"$536870913\r\n", b"*4294967296\r\n", b"$3\r\nabcXY", b"\r\n"],
)
def test_impossible_lengths_and_framing_are_protocol_errors(data: bytes) -> None:
    reader = PyReader()
    reader.feed(data)
    with pytest.raises(InvalidResponse):
        reader.gets()


def test_a_reply_fed_in_pieces_is_parsed_once_not_again_per_piece() -> None:
    """The elements already read stay read: each feed parses only what is new."""
    items = [b"$5\r\nitem%d\r\n" % (i % 10) for i in range(1000)]
    reader = PyReader()
    reader.feed(b"*1000\r\n")
    for n, item in enumerate(items[:-1], 1):
        reader.feed(item)
        assert reader.gets() is INCOMPLETE
        assert len(reader._stack[-1][1]) == n  # kept, not thrown away and parsed again
    reader.feed(items[-1][:3])
    assert reader.gets() is INCOMPLETE
    reader.feed(items[-1][3:] + b":7\r\n")
    assert reader.gets() == [b"item%d" % (i % 10) for i in range(1000)]
    assert reader.gets() == 7
    assert reader.gets() is INCOMPLETE

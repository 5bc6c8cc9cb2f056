"""celery_redlock.fencing.redis against a real redis-server (the session's ``shared5``
group; each test writes keys of its own)."""

from __future__ import annotations

import asyncio
import random
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.asyncio

from celery_redlock import ConfigurationError, FenceRejected, LockError
from celery_redlock.fencing.redis import (
    Fenced,
    fenced_get,
    fenced_get_async,
    fenced_set,
    fenced_set_async,
)
from celery_redlock.testing import RedisGroup


@pytest.fixture
def client(shared5: RedisGroup) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(shared5[0].url)
    yield made
    made.close()


@pytest.fixture
def key(client: redis.Redis) -> Iterator[str]:
    name = f"test:fenced:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def stored(client: redis.Redis, key: str) -> tuple[dict[Any, Any], int]:
    """Everything at the key, and its time to live in ms (-1: none, -2: no key)."""
    return client.hgetall(key) if client.type(key) == b"hash" else {}, client.pttl(key)


@pytest.mark.parametrize("before", [None, 41, 42])
def test_a_fence_not_lower_than_the_stored_one_writes_and_is_recorded(
    client: redis.Redis, key: str, before: int | None
) -> None:
    if before is not None:
        fenced_set(client, key, "old", before)
    fenced_set(client, key, "new", 42)
    assert fenced_get(client, key) == Fenced(b"new", 42)
    assert stored(client, key) == ({b"value": b"new", b"fence": b"42"}, -1)


def test_the_same_fence_writes_again(client: redis.Redis, key: str) -> None:
    fenced_set(client, key, "half", 7)
    fenced_set(client, key, "done", 7)
    assert fenced_get(client, key) == Fenced(b"done", 7)


def test_a_lower_fence_is_rejected_and_writes_nothing(client: redis.Redis, key: str) -> None:
    fenced_set(client, key, "theirs", 42, expire=60)
    before = stored(client, key)
    with pytest.raises(FenceRejected) as caught:
        fenced_set(client, key, "ours", 41, expire=5)
    assert (caught.value.offered, caught.value.standing, caught.value.reason) == (41, 42, "higher")
    assert str(caught.value) == f"write to redis key {key!r} rejected: fence 41 offered, 42 stands"
    after = stored(client, key)
    assert after[0] == before[0]
    assert 55_000 < after[1] <= 60_000  # the time to live is theirs, not ours


@pytest.mark.parametrize(
    ("standing", "offered"),
    [
        (2**53 + 1, 2**53),  # one apart where doubles are two apart: a float compare ties
        (2**63 - 1, 2**63 - 2),
        (1_800_000_000_000_001, 1_800_000_000_000_000),
        (1_900_000_000_000_000, 1_800_000_000_000_009),  # the high digits decide
        (10_000_000_000, 9_999_999_999),  # a digit longer
        (10, 9),
    ],
)
def test_fences_compare_exactly_at_any_size(
    client: redis.Redis, key: str, standing: int, offered: int
) -> None:
    fenced_set(client, key, "theirs", standing)
    with pytest.raises(FenceRejected) as caught:
        fenced_set(client, key, "ours", offered)
    assert caught.value.standing == standing
    fenced_set(client, key, "later", standing + 1 if standing < 2**63 - 1 else standing)
    assert fenced_get(client, key) == Fenced(
        b"later", standing + 1 if standing < 2**63 - 1 else standing
    )


@pytest.mark.parametrize(
    "garbage", ["abc", "042", "-5", "1.5", "", " 7", "1e3", "12345678901234567890"]
)
def test_an_unreadable_stored_fence_is_an_error_not_an_overwrite(
    client: redis.Redis, key: str, garbage: str
) -> None:
    client.hset(key, mapping={"value": "theirs", "fence": garbage})
    with pytest.raises(FenceRejected) as caught:
        fenced_set(client, key, "ours", 2**62)
    assert (caught.value.standing, caught.value.reason) == (None, "unreadable")
    assert str(caught.value) == (
        f"write to redis key {key!r} rejected: its stored fence is not one:"
        f" {garbage!r} (fence {2**62} offered)"
    )
    assert stored(client, key) == ({b"value": b"theirs", b"fence": garbage.encode()}, -1)
    with pytest.raises(LockError, match="holds no readable fence"):
        fenced_get(client, key)


def test_a_key_of_another_type_is_an_error_not_an_overwrite(client: redis.Redis, key: str) -> None:
    client.set(key, "plain")
    with pytest.raises(FenceRejected, match="it holds a string, not a fenced hash"):
        fenced_set(client, key, "ours", 5)
    assert client.get(key) == b"plain"


def test_a_hash_without_a_fence_counts_as_lower(client: redis.Redis, key: str) -> None:
    client.hset(key, mapping={"value": "unfenced", "other": "kept"})
    assert fenced_get(client, key) == Fenced(b"unfenced", None)
    fenced_set(client, key, "fenced", 1)
    assert stored(client, key)[0] == {b"value": b"fenced", b"fence": b"1", b"other": b"kept"}


def test_a_missing_key_reads_as_none(client: redis.Redis, key: str) -> None:
    assert fenced_get(client, key) is None


@pytest.mark.parametrize("expire", [2.5, timedelta(seconds=2.5), 2])
def test_expiry_is_set_on_each_write_and_a_write_without_it_persists(
    client: redis.Redis, key: str, expire: Any
) -> None:
    fenced_set(client, key, "v", 1, expire=expire)
    assert 1_500 < client.pttl(key) <= 2_500
    fenced_set(client, key, "v", 2)
    assert client.pttl(key) == -1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"fence": True}, "fence must be an int (a lock's fence), not bool: True"),
        ({"fence": 1.0}, "fence must be an int (a lock's fence), not float: 1.0"),
        ({"fence": "5"}, "fence must be an int (a lock's fence), not str: '5'"),
        ({"fence": 0}, "fence must be from 1 to 2**63 - 1, got 0"),
        ({"fence": 2**63}, "fence must be from 1 to 2**63 - 1, got 9223372036854775808"),
        ({"expire": 0}, "expire must be finite and more than 0 seconds, got 0"),
        ({"expire": "1"}, "expire must be a number of seconds or a timedelta, not str"),
        ({"expire": 1e13}, "expire 10000000000000.0 is beyond the longest TTL (2**53 ms)"),
        ({"value": None}, "value must be bytes, str, int or float, not NoneType"),
        ({"value": True}, "value must be bytes, str, int or float, not bool"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(
    client: redis.Redis, key: str, arguments: dict[str, Any], message: str
) -> None:
    given: dict[str, Any] = {"value": "v", "fence": 5, **arguments}
    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}$"):
        fenced_set(client, key, given.pop("value"), given.pop("fence"), **given)
    assert client.exists(key) == 0


def test_a_client_that_decodes_replies_reads_text(shared5: RedisGroup, key: str) -> None:
    with redis.Redis.from_url(shared5[0].url, decode_responses=True) as text:
        fenced_set(text, key, "v", 3)
        with pytest.raises(FenceRejected, match="fence 2 offered, 3 stands"):
            fenced_set(text, key, "w", 2)
        assert fenced_get(text, key) == Fenced("v", 3)
        text.delete(key)


def test_racing_writers_leave_the_highest_fences_value(shared5: RedisGroup, key: str) -> None:
    fences = random.sample(range(1_800_000_000_000_000, 1_800_000_000_000_100), 8)
    start = threading.Barrier(len(fences))
    outcome: dict[int, Any] = {}

    def run(fence: int) -> None:
        with redis.Redis.from_url(shared5[0].url) as own:
            start.wait()
            try:
                for attempt in range(20):  # each writes again and again, as a long run would
                    fenced_set(own, key, f"w{fence}:{attempt}", fence)
            except FenceRejected as exc:
                outcome[fence] = exc
            else:
                outcome[fence] = "ok"

    threads = [threading.Thread(target=run, args=(f,)) for f in fences]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    top = max(fences)
    with redis.Redis.from_url(shared5[0].url) as reader:
        assert fenced_get(reader, key) == Fenced(f"w{top}:19".encode(), top)
    assert outcome[top] == "ok"
    for fence, result in outcome.items():
        if result != "ok":
            assert isinstance(result, FenceRejected)
            assert result.offered == fence
            assert result.standing is not None
            assert result.standing > fence


def test_the_asyncio_twins(shared5: RedisGroup, key: str) -> None:
    async def main() -> tuple[Fenced | None, FenceRejected]:
        client = redis.asyncio.Redis.from_url(shared5[0].url)
        try:
            await fenced_set_async(client, key, "v", 10, expire=timedelta(seconds=30))
            await fenced_set_async(client, key, "w", 10)
            try:
                await fenced_set_async(client, key, "late", 9)
            except FenceRejected as exc:
                rejected = exc
            return await fenced_get_async(client, key), rejected
        finally:
            await client.aclose() if hasattr(client, "aclose") else await client.close()

    got, rejected = asyncio.run(main())
    assert got == Fenced(b"w", 10)
    assert (rejected.offered, rejected.standing) == (9, 10)

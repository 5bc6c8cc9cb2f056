"""Masters vote for what their server says it is, not for how they were written down.

Real servers throughout: one server reached under two addresses (a TCP port and its unix
socket, which no spelling can reveal), servers whose memory policy may evict lock keys,
and a user whose ACL refuses INFO. Both drivers read the facts with the connection's
first write, so each scenario runs under both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_redlock import AsyncRedlock, QuorumUnavailable, Redlock
from celery_redlock._core import replies
from celery_redlock._core.protocol import Outcome
from celery_redlock._core.quorum import Vote
from celery_redlock.testing import RedisGroup, RedisServer, free_port

DRIVERS = ["sync", "asyncio"]


def attempt(driver: str, masters: Sequence[Any], resource: str, **options: Any) -> tuple[bool, Any]:
    """One acquire on a new manager, released again if won: (won?, the votes or the error)."""
    if driver == "sync":
        with Redlock(masters, retry_count=0, **options) as dlm:
            try:
                lock = dlm.acquire(resource, 10)
            except QuorumUnavailable as exc:
                return False, exc
            assert lock is not None
            lock.release()
            return True, lock.votes

    async def main() -> tuple[bool, Any]:
        async with AsyncRedlock(masters, retry_count=0, **options) as dlm:
            try:
                lock = await dlm.acquire(resource, 10)
            except QuorumUnavailable as exc:
                return False, exc
            assert lock is not None
            await lock.release()
            return True, lock.votes

    return asyncio.run(main())


def outcomes(votes: Sequence[Vote]) -> list[Outcome]:
    return [v.outcome for v in votes]


# --- one server listed twice ---------------------------------------------------------------


@pytest.fixture
def two_addresses(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """One server, as its TCP URL and as its unix socket URL."""
    sock = tmp_path / "r.sock"
    with RedisServer(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]) as server:
        yield server.url, f"unix://{sock}?db=0"


@pytest.mark.parametrize("driver", DRIVERS)
def test_one_server_under_two_addresses_does_not_make_a_quorum_with_a_dead_master(
    driver: str, two_addresses: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The configuration passes (nothing in the spellings tells), but the server's run_id
    does: without the check, one live server and a dead master made "2 of 3"."""
    tcp, unix = two_addresses
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, logger="celery_redlock"):
        won, err = attempt(driver, [tcp, unix, dead], "aliased")
    assert not won, "one server voted twice toward the quorum"
    assert isinstance(err, QuorumUnavailable)
    # The spelling whose INFO came first may have voted yes before the other's told; the
    # other is refused, naming the first: which one that is, is a race of two connects.
    assert outcomes(err.votes).count(Outcome.YES) <= 1
    assert "same server as redis://127.0.0.1:" in str(err) or f"same server as {unix}" in str(err)
    warnings = [r.getMessage() for r in caplog.records if "same server as" in r.getMessage()]
    assert warnings  # said once per master when found, not per vote


#: Rounds tried before the aliases must have been found: a round settles once a quorum
#: said yes, so on a busy machine the aliases' replies (INFO first) may come in later ones.
ROUNDS = 50


def _alias_rounds(votes_per_round: list[tuple[Vote, ...]]) -> tuple[bool, bool]:
    """Whether both aliases were named in some round, and whether either was counted as a
    yes in any round after the one in which the second was named."""
    texts = ["same server as unix://", "same server as redis://"]
    found_at = None
    for n, votes in enumerate(votes_per_round):
        if all(any(t in str(v) for v in votes) for t in texts):
            found_at = n
            break
    if found_at is None:
        return False, False
    later = votes_per_round[found_at + 1 :]
    counted = any(v.outcome is Outcome.YES for votes in later for v in votes[:2])
    return True, counted


@pytest.mark.parametrize("driver", DRIVERS)
def test_once_found_neither_spelling_votes_and_the_warning_is_not_repeated(
    driver: str, two_addresses: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    tcp, unix = two_addresses
    others = RedisGroup(3).start()
    rounds: list[tuple[Vote, ...]] = []
    try:
        masters = [tcp, unix, *others.urls]
        with caplog.at_level(logging.WARNING, logger="celery_redlock"):
            if driver == "sync":
                with Redlock(masters, retry_count=0) as dlm:
                    for _ in range(ROUNDS):
                        lock = dlm.acquire("aliased", 10)
                        assert lock is not None  # the three other servers are a quorum of 5
                        rounds.append(lock.votes)
                        lock.release()
            else:

                async def main() -> None:
                    async with AsyncRedlock(masters, retry_count=0) as dlm:
                        for _ in range(ROUNDS):
                            lock = await dlm.acquire("aliased", 10)
                            assert lock is not None
                            rounds.append(lock.votes)
                            await lock.release()

                asyncio.run(main())
    finally:
        others.close()
    found, counted_after = _alias_rounds(rounds)
    assert found, [str(v) for v in rounds[-1]]
    assert not counted_after  # once found, neither spelling ever counts again
    logged = [r for r in caplog.records if "same server as" in r.getMessage()]
    assert len(logged) == 2  # one per master, however many rounds


# --- eviction ------------------------------------------------------------------------------


def _limit_memory(server: RedisServer, policy: str) -> None:
    """A memory limit just above what the empty server uses, and ``policy`` at it."""
    with server.client() as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(used + 2 * 1024 * 1024))
        client.config_set("maxmemory-policy", policy)


def _fill_until_evicted(server: RedisServer, key: str) -> None:
    """Write data without a TTL until ``key`` (which has one) is evicted (or memory is full)."""
    with server.client() as client:
        for n in range(10_000):
            if not client.exists(key):
                return
            try:
                client.set(f"filler:{n}", b"x" * 16_384)
            except redis.ResponseError:  # OOM: nothing volatile left to evict
                return


def test_evicted_lock_keys_cannot_let_a_second_holder_in(fresh3: RedisGroup) -> None:
    """Two of three masters with a memory limit and volatile-lru. Before the check, A won
    there, other data evicted A's keys (they have TTLs; the boot marker has none, so
    nothing abstained) and B took the lock while A's validity still ran. Now those
    masters' votes do not count: A is refused, naming the policy and the fix."""
    for server in list(fresh3)[:2]:
        _limit_memory(server, "volatile-lru")
    refusal = None
    with Redlock(fresh3.urls, retry_count=0) as a, Redlock(fresh3.urls, retry_count=0) as b:
        try:
            held = a.acquire("evicted", 30)
        except QuorumUnavailable as exc:
            held, refusal = None, exc
        if held is not None:  # the defect: show what it leads to
            for server in list(fresh3)[:2]:
                _fill_until_evicted(server, "redlock:evicted")
            intruder = b.acquire("evicted", 30)
            assert intruder is None or not held.valid, "two holders at once"
    assert refusal is not None, "masters that may evict lock keys voted"
    assert "maxmemory-policy volatile-lru" in str(refusal)
    assert "use noeviction (or maxmemory 0)" in str(refusal)
    assert outcomes(refusal.votes)[:2] == [Outcome.ERROR, Outcome.ERROR]
    # The third master keeps its vote: a yes, unless the round settled on the two
    # refusals before its reply was read (an outage either way).
    third = refusal.votes[2]
    assert third.outcome is Outcome.YES or third.error == replies.SETTLED_WITHOUT, third


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru", "volatile-ttl"])
def test_a_master_that_may_evict_gets_error_votes_naming_its_policy(
    driver: str, policy: str, fresh3: RedisGroup
) -> None:
    _limit_memory(fresh3[0], policy)
    # With a dead third master the round cannot settle before the evicting one answers
    # (two healthy ones would settle it first on a busy machine, its reply unread).
    dead = f"redis://127.0.0.1:{free_port()}/0"
    won, error = attempt(driver, [fresh3[0].url, fresh3[1].url, dead], "evicts", master_timeout=2.0)
    assert not won  # its vote does not count: one yes of the two needed
    votes = error.votes
    assert outcomes(votes)[0] is Outcome.ERROR
    assert f"maxmemory-policy {policy}" in str(votes[0])


@pytest.mark.parametrize("driver", DRIVERS)
def test_noeviction_or_no_limit_still_votes(driver: str, fresh3: RedisGroup) -> None:
    _limit_memory(fresh3[0], "noeviction")
    with fresh3[1].client() as client:
        client.config_set("maxmemory-policy", "allkeys-lru")  # maxmemory stays 0: no limit
    dead = f"redis://127.0.0.1:{free_port()}/0"
    won, votes = attempt(driver, [fresh3[0].url, fresh3[1].url, dead], "keeps")
    assert won  # so both voted yes
    assert outcomes(votes)[:2] == [Outcome.YES, Outcome.YES]


def test_a_policy_changed_later_is_seen_on_the_next_connection(fresh3: RedisGroup) -> None:
    for server in list(fresh3)[:2]:
        _limit_memory(server, "volatile-lru")
    with Redlock(fresh3.urls, retry_count=0) as dlm:
        with pytest.raises(QuorumUnavailable):
            dlm.acquire("later", 10)
        for server in list(fresh3)[:2]:
            with server.client() as client:
                client.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(QuorumUnavailable):
            dlm.acquire("later", 10)  # the open connections keep what they were told
        dlm.close()
        lock = dlm.acquire("later", 10)
        assert lock is not None
        assert "maxmemory" not in "; ".join(map(str, lock.votes))


# --- a user that may not run INFO ----------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_user_without_info_still_votes_with_a_warning(
    driver: str, fresh3: RedisGroup, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusing the votes of a master we cannot ask would stop every lock of such a
    deployment; its identity and eviction go unchecked, and the log says so."""
    urls = []
    for server in fresh3:
        with server.client() as client:
            client.acl_setuser(
                "locker", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-info"]
            )
        urls.append(f"redis://locker:pw@127.0.0.1:{server.port}/0")
    with caplog.at_level(logging.WARNING, logger="celery_redlock"):
        won, votes = attempt(driver, [*urls[:2], f"redis://127.0.0.1:{free_port()}/0"], "no-info")
    assert won  # so both voted yes
    assert outcomes(votes)[:2] == [Outcome.YES, Outcome.YES]
    refused = [r.getMessage() for r in caplog.records if "INFO refused" in r.getMessage()]
    assert len(refused) == 2
    assert all("identity and eviction unchecked" in text for text in refused)
    assert not any("pw@" in text for text in refused)

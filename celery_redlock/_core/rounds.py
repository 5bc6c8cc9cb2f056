"""What both drivers decide about one round, without its I/O: who gets the command, which
bytes go out, how long to wait for more replies, and what a master's reply or silence
votes. The sync driver polls sockets and the asyncio driver awaits streams around these;
the decisions are made once, so that the two give the same votes in the same case.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from celery_redlock._core import replies, resp
from celery_redlock._core.protocol import Call, is_noscript
from celery_redlock._core.quorum import Count, Round, Vote
from celery_redlock._core.roster import Roster, describe

__all__ = ["excluded", "judge", "packed", "patience", "unanswered", "wake_ups"]


def excluded(roster: Roster, i: int, now: float, rnd: Round, connected: bool) -> Vote | None:
    """Why master ``i`` gets no command this round (an ERROR vote), or None to send it.

    Clean-ups nobody waits for always go out, on the connection of the call they clean up
    after, so the master runs them in that order. A master in its cool-down is skipped,
    except by a release over a connection already open (``connected``, see
    :attr:`Call.safe_anytime`): never a new one, whose connect could take the whole timeout.
    """
    if not rnd.wait or (connected and rnd.call.safe_anytime):
        return None
    return roster.skipped(i, now)


def packed(rnd: Round) -> bytes:
    """The bytes every master is sent. A round nobody waits for carries the script's
    source: its replies are drained unread, so a NOSCRIPT could not be answered."""
    return rnd.call.packed() if rnd.wait else resp.pack(rnd.call.fallback())


def patience(count: Count, pending: int, deadline: float, now: float) -> float:
    """How long to wait for the next reply: until the deadline, or 0 once the round is
    settled or past it, for one last look at replies already here (reading them now
    spares the next round). A driver stops when a look of 0 found nothing."""
    if count.decided(pending):
        return 0.0
    return max(0.0, deadline - now)


def judge(roster: Roster, i: int, call: Call, reply: Any) -> Vote | None:
    """Master ``i``'s reply to ``call`` as its vote; None for a NOSCRIPT, to which the
    driver sends ``call.fallback()`` and reads again. An error reply (returned by the
    reader, not raised) is an ERROR vote that leaves the master's health alone."""
    if isinstance(reply, RedisError):
        return None if is_noscript(reply) else roster.error(i, describe(reply))
    return roster.answered(i, call, reply)


def unanswered(roster: Roster, i: int, rnd: Round, expired: bool) -> Vote:
    """The vote of master ``i``, sent the command but not heard when the round ended: not
    awaited (a clean-up), past the per-master timeout (the master fails, and cools down),
    or the round settled without it."""
    if not rnd.wait:
        return roster.error(i, replies.NOT_AWAITED)
    if expired:
        return roster.failed(i, replies.timed_out(roster.timeout))
    return roster.error(i, replies.SETTLED_WITHOUT)


def wake_ups(reply: Any, late: bool) -> int:
    """What one pub/sub reply on a waiter's channel counts for it, in both drivers.

    Every message is a wake-up: each master sends its own copy of a release, and each says
    that one more master freed the key for us (``quorum.acquire`` asks again once enough
    came). A subscription confirmed ``late``, after the listen stopped waiting for it, is
    one too: a release sent before it went unheard, so the waiter must ask again.
    """
    kind = reply[0] if isinstance(reply, list) and reply else None
    return int(kind == b"message" or (late and kind == b"subscribe"))

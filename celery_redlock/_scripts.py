"""The wire protocol: every command celery_redlock sends to a master, and what replies mean.

This module is the only place that knows Redis commands. The algorithm (``_quorum``) asks
for a :class:`Call`; drivers turn it into bytes with :meth:`Call.command` and turn the
reply back into a :class:`Reply` with :meth:`Call.parse`. Each script is one round trip and
atomic on its master, which is what makes compare-and-delete and compare-and-expire safe:
no other client can slip between the compare and the write.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Outcome(Enum):
    """How one master answered one call."""

    YES = "yes"  # the master did what we asked (set, extended, released, holds)
    NO = "no"  # the master refused: another token holds the key, or ours is gone
    ERROR = "error"  # no usable answer: refused connection, timeout, error reply


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed reply: the outcome and, for refusals, the holder's remaining time (ms)."""

    outcome: Outcome
    pttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script sent by SHA1 (EVALSHA), with its source kept for the NOSCRIPT fallback."""

    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


# KEYS[1] lock key; ARGV[1] token; ARGV[2] ttl in ms.
# Returns {1, 0} when the key is now ours (newly set, or already ours and re-armed: an
# earlier attempt with the same token whose reply was lost), else {0, pttl} with the
# current holder's remaining milliseconds so that waiters can sleep until it expires.
ACQUIRE = Script(
    "acquire",
    """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {1, 0}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
""",
)

# KEYS[1] lock key; ARGV[1] token; ARGV[2] new ttl in ms.
# Returns 1 when the key held our token and was re-armed, else 0. It never creates a key:
# re-creating an expired lock would resurrect it after someone else may have taken it.
EXTEND = Script(
    "extend",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)

# KEYS[1] lock key; ARGV[1] token.
# Returns 1 when the key held our token and was deleted, else 0. The deletion is announced
# on a channel named like the key, which is how blocked waiters wake without polling.
RELEASE = Script(
    "release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', KEYS[1], ARGV[1])
    return 1
end
return 0
""",
)


class Verb(Enum):
    """What a call asks of a master."""

    ACQUIRE = "acquire"
    EXTEND = "extend"
    RELEASE = "release"
    INSPECT = "inspect"


_SCRIPTS = {Verb.ACQUIRE: ACQUIRE, Verb.EXTEND: EXTEND, Verb.RELEASE: RELEASE}


@dataclass(frozen=True, slots=True)
class Call:
    """One command for every master in a round; immutable so one object serves all masters."""

    verb: Verb
    key: str
    token: str = ""
    ttl_ms: int = 0

    def command(self) -> tuple[Any, ...]:
        """The command as sent in the common case (EVALSHA, or PTTL for inspection)."""
        if self.verb is Verb.INSPECT:
            return ("PTTL", self.key)
        script = _SCRIPTS[self.verb]
        return ("EVALSHA", script.sha, 1, self.key, *self._argv())

    def fallback(self) -> tuple[Any, ...]:
        """The same call with the script's source, for a master that answered NOSCRIPT."""
        script = _SCRIPTS[self.verb]
        return ("EVAL", script.source, 1, self.key, *self._argv())

    def _argv(self) -> tuple[Any, ...]:
        if self.verb is Verb.RELEASE:
            return (self.token,)
        return (self.token, self.ttl_ms)

    def parse(self, reply: Any) -> Reply:
        """Turn a master's raw reply into a :class:`Reply`."""
        if self.verb is Verb.ACQUIRE:
            won, pttl = reply
            return Reply(Outcome.YES) if won == 1 else Reply(Outcome.NO, int(pttl))
        if self.verb is Verb.INSPECT:
            # PTTL: -2 no key, -1 key without expiry (not ours, but it does block), else ms.
            held = int(reply) != -2
            return Reply(Outcome.YES if held else Outcome.NO, int(reply) if held else None)
        return Reply(Outcome.YES if int(reply) == 1 else Outcome.NO)


def is_noscript(error: BaseException) -> bool:
    """Whether an error reply means the master lost its script cache (restart, FLUSH)."""
    return str(error).startswith("NOSCRIPT") or type(error).__name__ == "NoScriptError"

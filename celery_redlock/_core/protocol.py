"""The wire protocol: every command celery_redlock sends to a master, and what replies mean.

This module is the only place that knows Redis commands. The algorithm (``_quorum``) asks
for a :class:`Call`; drivers turn it into bytes with :meth:`Call.command` and turn the
reply back into a :class:`Reply` with :meth:`Call.parse`. Each script is one round trip and
atomic on its master, which is what makes compare-and-delete and compare-and-expire safe:
no other client can slip between the compare and the write.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from celery_redlock._core.resp import pack, pack_head, pack_rest
from celery_redlock._core.server import INFO_SECTIONS, ServerFacts, parse_info


class Outcome(Enum):
    """How one master answered one call."""

    YES = "yes"  # the master did what we asked (set, extended, released, holds)
    NO = "no"  # the master refused: another token holds the key, or ours is gone
    ABSTAIN = "abstain"  # restarted empty, sitting out its restart guard: counts as no answer
    ERROR = "error"  # no usable answer: refused connection, timeout, error reply


class Reply(NamedTuple):
    """A parsed reply: the outcome, for refusals the holder's remaining time (ms), for a
    peek the holder's owner text (never the token's secret part), for a release that
    deleted the key but could not wake the next waiter, why (the master's error), for
    an acquire the master's restart guard (ms) where it is longer than the one declared,
    for a fenced grant (or a fence's write-back) the master's fence counter, and for a
    permit's grant the slot key granted."""

    outcome: Outcome
    pttl_ms: int | None = None
    owner: str | None = None
    note: str | None = None
    guard_ms: int | None = None
    fence: int | None = None
    slot: str | None = None


class Vote(NamedTuple):
    """One master's answer in one round; errors carry their cause, masters their redacted name."""

    master: str
    outcome: Outcome
    pttl_ms: int | None = None
    error: str | None = None
    owner: str | None = None
    guard_ms: int | None = None  # the master's restart guard, where longer than declared
    fence: int | None = None  # a fenced grant's counter on this master (see protocol.FENCE)
    slot: str | None = None  # a permit's grant: the slot key this master gave us (PERMIT)

    def __str__(self) -> str:
        if self.outcome is Outcome.ERROR:
            return f"{self.master}: error ({self.error})"
        if self.outcome is Outcome.ABSTAIN and self.error is not None:
            return f"{self.master}: abstains ({self.error})"
        if self.outcome is Outcome.ABSTAIN:
            return f"{self.master}: abstains after a restart ({self.pttl_ms} ms of guard left)"
        if self.outcome is Outcome.NO and self.pttl_ms is not None:
            return f"{self.master}: no (held, {self.pttl_ms} ms left)"
        if self.error:  # a yes with a caveat: a release that could not wake the next waiter
            return f"{self.master}: {self.outcome.value} ({self.error})"
        return f"{self.master}: {self.outcome.value}"


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script sent by SHA1 (EVALSHA), with its source kept for the NOSCRIPT fallback."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


#: Where each master records when it started serving locks (its own clock, in ms). It is
#: the same for every key prefix: a restart loses every client's keys alike.
BOOT_KEY = "__celery_redlock_boot__"


class Marker(NamedTuple):
    """A boot marker's value: when the master started serving locks (its clock, ms), and
    the longest restart guard (ms) declared to it (0 where the marker does not say)."""

    boot_ms: int
    guard_ms: int = 0


def parse_marker(raw: bytes | str | None) -> Marker | None:
    """The boot marker as stored (``boot_ms``, or ``boot_ms.guard_ms``); None when absent.

    The one reader of the marker's format outside the acquire script, for the operator
    views and the test servers. An unreadable value reads as absent: such a master
    cannot prove it kept its data.
    """
    if raw is None:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    boot, _sep, guard = text.partition(".")
    try:
        return Marker(int(boot), int(guard) if guard else 0)
    except ValueError:
        return None


#: Where each master counts a key's grants, for fencing: outside every key prefix, as
#: BOOT_KEY is, so listing locks never shows a counter (see FENCE_TTL_MS for how long one
#: lives).
FENCE_PREFIX = "__celery_redlock_fence__:"

#: How long a key's fence counter outlives the last grant or write-back that touched it
#: (ms). A counter that is gone (new, expired, or lost with the master's data) is seeded
#: from the master's clock in microseconds (``ACQUIRE``): larger than any fence minted
#: earlier by a master whose clock was no further ahead, since no Redis counts a million
#: grants a second. The seed is whole seconds (the microseconds dropped), so that masters
#: seeding one key in one round agree and no write-back is needed, except in the second
#: after a restart guard ends, when a restarted master may seed within a second of the
#: last fence it granted: then the seed keeps its microseconds. So a fence never goes
#: backwards while the masters' wall clocks agree to within the restart guard (and this
#: much, less a second). Short, because per-argument locks make keys without bound: the
#: counters kept are those of the keys granted in the last ten minutes.
FENCE_TTL_MS = 600_000


def fence_key(key: str) -> str:
    """The counter from which ``key``'s fences are minted on each master."""
    return FENCE_PREFIX + key


#: Lua shared by the scripts that touch a fence counter: read one (nil when absent), or
#: return why a value is no count below 2**53 (the largest integer Lua's numbers, which
#: are doubles, hold exactly), for the script to answer with an error reply naming the
#: key: overwriting it could mint a fence lower than one already handed out.
_FENCE_COUNTER = """
local function fence_counter(key)
    local stored = redis.call('GET', key)
    if not stored then
        return nil, nil
    end
    local n = #stored <= 16 and string.match(stored, '^%d+$') and tonumber(stored)
    if not n or n >= 9007199254740991 then
        local shown = string.format('%q', string.sub(stored, 1, 40))
        return nil, 'fence counter ' .. key .. ' holds ' .. shown .. ', not a count below 2^53'
    end
    return n, nil
end
"""

# KEYS[1] lock key; KEYS[2] boot marker; KEYS[3] the key's fence counter; ARGV[1] token;
# ARGV[2] ttl in ms; ARGV[3] restart guard in ms the client declares (0: off, the marker
# is not consulted); ARGV[4] the fence counter's ttl in ms (0: no fencing, the counter is
# not touched). Returns {1, 0, guard, fence} when the key is now ours (newly set, or
# already ours and re-armed: an earlier attempt with the same token whose reply was
# lost); {0, pttl, guard} with the current holder's remaining milliseconds, so that
# waiters can sleep until it expires; or {2, ms, guard} while the master abstains.
# ``guard`` is the master's restart guard where it is longer than the one declared, else
# 0; ``fence`` is the key's counter after this grant (0 without fencing).
#
# A master without a boot marker has lost its data (restart without persistence,
# FLUSHALL, a fresh replacement): it may have held keys that other clients still count
# on, so it grants nothing until the guard has passed since it noticed. The guard is the
# master's, not the caller's: the marker keeps the longest guard any client declared
# (``boot_ms.guard_ms``; an old ``boot_ms`` marker reads as guard 0), and the script
# enforces the longer of that and the declared one. A master that lost its data lost that
# memory too, so the script alone cannot protect a long-guard client's lock from a
# short-guard client after a majority restarted empty: the masters that kept their data
# report their longer guard, and the algorithm (``quorum.acquire``) then counts no grant
# from a master that knew only a shorter one, and declares the longer one from then on.
# The guard follows a decimal point so that clients of 0.1, which read the marker with
# ``tonumber``, see a boot time less than a millisecond off instead of a missing marker
# (which they would reset, making the master abstain again during a rolling upgrade).
#
# A fenced grant counts one more on the key's counter (a re-armed grant of our own token
# counted already), seeding an absent counter from the clock, in whole seconds times a
# million, or to the microsecond within a second of the guard's end (see FENCE_TTL_MS);
# the counter is read before anything is written, so a refused one leaves the lock
# untaken.
ACQUIRE = Script(
    _FENCE_COUNTER
    + """
local declared = tonumber(ARGV[3])
local fencing = tonumber(ARGV[4]) > 0
local longer = 0
local counter = nil
local precise = 0
if declared > 0 or fencing then
    if redis.replicate_commands then redis.replicate_commands() end
end
if fencing then
    local bad
    counter, bad = fence_counter(KEYS[3])
    if bad then
        return redis.error_reply(bad)
    end
end
if declared > 0 then
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local marker = redis.call('GET', KEYS[2])
    local boot, stored = nil, 0
    if marker then
        local b, g = string.match(marker, '^(%d+)%.?(%d*)$')
        boot, stored = tonumber(b), tonumber(g) or 0
    end
    if not boot then
        boot, stored = now, -1
    end
    local guard = math.max(declared, stored)
    if stored < guard then
        redis.call('SET', KEYS[2], string.format('%.0f.%.0f', boot, guard))
    end
    if guard > declared then
        longer = guard
    end
    if now < boot + guard then
        return {2, boot + guard - now, longer}
    end
    if now < boot + guard + 1000 then
        precise = 1
    end
end
local function fenced(step)
    if not fencing then
        return 0
    end
    local n = counter and counter + step
    if not n then
        local t = redis.call('TIME')
        n = t[1] * 1000000 + precise * t[2]
    end
    redis.call('SET', KEYS[3], string.format('%.0f', n), 'PX', ARGV[4])
    return n
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {1, 0, longer, fenced(1)}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, 0, longer, fenced(0)}
end
return {0, redis.call('PTTL', KEYS[1]), longer}
""",
)

# KEYS[1] lock key; KEYS[2] its fence counter; ARGV[1] token; ARGV[2] the fence; ARGV[3]
# the counter's ttl in ms. A fence's write-back: while the key holds our token, raise the
# counter to at least the fence. Returns the counter then, or 0 when the key is not ours.
# Sent only to masters whose grant counted lower than the fence handed out, so that a
# quorum of the masters that granted the lock knows it before anyone is told it (see
# ``quorum.acquire``). The owner check keeps it within the lease: once the key is gone
# here, a later holder may have counted on this master, and is no business of ours.
FENCE = Script(
    _FENCE_COUNTER
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local counter, bad = fence_counter(KEYS[2])
if bad then
    return redis.error_reply(bad)
end
local n = math.max(counter or 0, tonumber(ARGV[2]))
redis.call('SET', KEYS[2], string.format('%.0f', n), 'PX', ARGV[3])
return n
""",
)

# KEYS[1] lock key; ARGV[1] token; ARGV[2] new ttl in ms.
# Returns 1 when the key held our token and was re-armed, else 0. It never creates a key:
# re-creating an expired lock would resurrect it after someone else may have taken it.
EXTEND = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)

#: Where a key's blocked waiters stand in line on each master: a sorted set of their wake-up
#: channels, oldest first (by the master's clock when each joined). Outside every key
#: prefix, as BOOT_KEY is: no resource's key can be it, and listing locks never shows it.
QUEUE_PREFIX = "__celery_redlock_waiters__:"

#: How long a line outlives its last waiter's last attempt (ms). Every waiter asks again
#: at least once per ``quorum.FALLBACK_POLL``, each time keeping the line alive for this
#: long, so it lapses only once its waiters are gone; its entries are only hints.
QUEUE_TTL_MS = 10_000


def queue_key(key: str) -> str:
    """The sorted set holding ``key``'s line of waiters."""
    return QUEUE_PREFIX + key


def waiter_channel(key: str, waiter: str) -> str:
    """The channel one waiter for ``key`` listens on: named after the key, so that one
    ACL channel pattern (``&redlock:*``) covers the keys' waiters."""
    return f"{key}:waiter:{waiter}"


# KEYS[1] lock key; KEYS[2] its line of waiters; ARGV[1] token.
# Returns 1 when the key held our token and was deleted, else 0. The release wakes the
# oldest waiter still listening, alone: the lock is handed on, not fought over, and the
# others sleep until their turn (or their own timed poll). PUBLISH returns how many heard:
# an entry nobody hears (a waiter that gave up or died) is dropped and the next one tried,
# a few per release. A release nobody waits for costs one ZRANGE of a missing key.
# The PUBLISH runs in redis.pcall, after the DEL: a user refused it (ACL) still released,
# and hears so, as {2, error}: a Lua error would not undo the DEL, only hide it.
#: Lua shared by every deletion that hands a lock on (a release, a forced release): wake
#: the oldest waiter in ``line`` that still listens, alone; returns the PUBLISH error of a
#: user refused it, else nil.
_WAKE_NEXT = """
local function wake_next(line, message)
    for _, waiter in ipairs(redis.call('ZRANGE', line, 0, 9)) do
        local heard = redis.pcall('PUBLISH', waiter, message)
        if type(heard) == 'table' then
            return heard.err
        end
        if heard > 0 then
            return nil
        end
        redis.call('ZREM', line, waiter)
    end
    return nil
end
"""

RELEASE = Script(
    _WAKE_NEXT
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[1])
local refused = wake_next(KEYS[2], ARGV[1])
if refused then
    return {2, refused}
end
return 1
""",
)

# KEYS[1] lock key; KEYS[2] its line of waiters; ARGV[1] the message the woken waiter
# hears; ARGV[2] the token's length. For operators (``celery redlock release``): returns 1
# when the key held a lock's value (token, or token:owner) and was deleted, 0 when there
# is no such key, -1 when it is something else (left alone). The check and the delete are
# one script, so a key that changed between them cannot be deleted unchecked; the next
# waiter is woken as by a release, and a user refused PUBLISH still gets the deletion.
FORCE_RELEASE = Script(
    _WAKE_NEXT
    + """
local value = redis.pcall('GET', KEYS[1])
if not value then return 0 end
if type(value) ~= 'string' then return -1 end
local n = tonumber(ARGV[2])
local token = string.sub(value, 1, n)
local rest = string.sub(value, n + 1, n + 1)
if #token < n or string.find(token, '[^0-9a-f]') or (rest ~= '' and rest ~= ':') then
    return -1
end
redis.call('DEL', KEYS[1])
wake_next(KEYS[2], ARGV[1])
return 1
""",
)


# KEYS the lock keys (one, or a semaphore's slots); ARGV[1] token.
# Returns how many of the keys held our token and were deleted (for one key: 1, else
# 0). Undoes a lost round without waking anyone: the lock was never ours, so nobody
# waits for this deletion, and the waiter it would wake would only race the winner (or
# the sender) and lose.
UNDO = Script(
    """
local undone = 0
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then
        undone = undone + redis.call('DEL', key)
    end
end
return undone
""",
)

# KEYS: ACQUIRE's, then the key's line of waiters; ARGV: ACQUIRE's, then the waiter's
# channel. A blocked waiter's attempt: ACQUIRE's own text runs unchanged on the arguments
# it expects (the two extra ones are taken off first), and replies as ACQUIRE does. A
# grant takes the waiter out of the line; a refusal puts it in, or keeps its place if it
# is in already (ZADD NX), ordered by this master's clock, and keeps the line alive.
QUEUED = Script(
    f"""
local queue = table.remove(KEYS)
local waiter = table.remove(ARGV)
if redis.replicate_commands then redis.replicate_commands() end
local reply = (function()
{ACQUIRE.source}
end)()
if reply[1] == 1 then
    redis.call('ZREM', queue, waiter)
elseif reply[1] == 0 then
    local t = redis.call('TIME')
    redis.call('ZADD', queue, 'NX', string.format('%.0f', t[1] * 1000000 + t[2]), waiter)
    redis.call('PEXPIRE', queue, {QUEUE_TTL_MS})
end
return reply
""",
)


def permit_key(key: str, slot: int) -> str:
    """The key of slot ``slot`` (0 to limit - 1) of the semaphore on ``key``: an ordinary
    lock key, so that a permit is a lease on it and every lock verb works on it unchanged."""
    return f"{key}:permit:{slot}"


def permit_line(key: str) -> str:
    """The name whose line of waiters (``queue_key``) and channels (``waiter_channel``)
    a semaphore on ``key`` uses, for all its slots alike: not ``key``'s own, so that a lock
    and a semaphore on one resource never wake each other's waiters."""
    return f"{key}:permits"


# KEYS[1] the boot marker; KEYS[2] the semaphore's line of waiters; then for each slot,
# in the order to try them, its key and its fence counter. ARGV: ACQUIRE's (token, ttl,
# restart guard, fence counter ttl), then the waiter's channel ("" for none).
# A permit: ACQUIRE's own text runs unchanged on each slot in turn, given the KEYS and
# ARGV it expects, until one grants. Returns ACQUIRE's reply with, on a grant, the
# slot's position in KEYS order fifth (0 for the first slot given): {1, 0, guard, fence,
# position}; when every slot is held, {0, pttl, guard} with the soonest expiry among
# them; {2, ms, guard} while the master abstains (the guard is the master's, so the first
# slot's abstention is every slot's). A slot that already holds our token is re-armed
# first, so a call run twice (a reply lost, the call sent again) takes one slot, not two.
# A waiter (ARGV[5] not empty) leaves the semaphore's one line when granted, and joins it
# (or keeps its place) when refused, as QUEUED does for a key: a release of any slot wakes
# the oldest waiter in it (RELEASE with this line as its KEYS[2]).
PERMIT = Script(
    f"""
local boot, line, waiter = KEYS[1], KEYS[2], ARGV[5]
local slots = {{}}
for i = 3, #KEYS, 2 do
    slots[#slots + 1] = {{KEYS[i], KEYS[i + 1]}}
end
if redis.replicate_commands then redis.replicate_commands() end
local acquire = function()
{ACQUIRE.source}
end
local function try(position)
    KEYS[1], KEYS[2], KEYS[3] = slots[position][1], boot, slots[position][2]
    local reply = acquire()
    if reply[1] == 1 then
        reply[4] = reply[4] or 0
        reply[5] = position - 1
    end
    return reply
end
local reply = nil
for position, slot in ipairs(slots) do
    if redis.call('GET', slot[1]) == ARGV[1] then
        reply = try(position)
        break
    end
end
local soonest = nil
if not reply then
    for position = 1, #slots do
        local tried = try(position)
        if tried[1] ~= 0 then
            reply = tried
            break
        end
        if not soonest or (tried[2] >= 0 and (soonest[2] < 0 or tried[2] < soonest[2])) then
            soonest = tried
        end
    end
end
reply = reply or soonest
if waiter ~= '' and reply[1] == 1 then
    redis.call('ZREM', line, waiter)
elseif waiter ~= '' and reply[1] == 0 then
    local t = redis.call('TIME')
    redis.call('ZADD', line, 'NX', string.format('%.0f', t[1] * 1000000 + t[2]), waiter)
    redis.call('PEXPIRE', line, {QUEUE_TTL_MS})
end
return {{reply[1], reply[2], reply[3], reply[4], reply[5]}}
""",
)


class Verb(Enum):
    """What a call asks of a master."""

    ACQUIRE = "acquire"
    QUEUED = "queued"  # an acquire by a blocked waiter, who stands in line if refused
    EXTEND = "extend"
    RELEASE = "release"
    UNDO = "undo"
    FENCE = "fence"  # a fence's write-back (see FENCE)
    PERMIT = "permit"  # a semaphore's acquire: the first free slot of several (see PERMIT)
    INSPECT = "inspect"
    PEEK = "peek"


_SCRIPTS = {
    Verb.ACQUIRE: ACQUIRE,
    Verb.QUEUED: QUEUED,
    Verb.EXTEND: EXTEND,
    Verb.RELEASE: RELEASE,
    Verb.UNDO: UNDO,
    Verb.FENCE: FENCE,
    Verb.PERMIT: PERMIT,
}


class Call(NamedTuple):
    """One command for every master in a round; immutable so one object serves all masters.

    The per-round values (Call, Reply, Vote, and quorum's Round) are named tuples,
    not frozen dataclasses: a frozen dataclass sets each field through
    ``object.__setattr__``, a cost on every round that callgrind showed (bench_instructions)."""

    verb: Verb
    key: str
    token: str = ""
    ttl_ms: int = 0
    guard_ms: int = 0
    waiter: str = ""  # QUEUED: the waiter's channel (see waiter_channel)
    fencing: bool = False  # ACQUIRE, QUEUED: count the grant on the key's fence counter
    fence: int = 0  # FENCE: the fence to raise the counter to
    #: PERMIT: the slot keys in the order to try them; UNDO: the keys to undo (not ``key``)
    slots: tuple[str, ...] = ()
    line: str = ""  # RELEASE: whose line of waiters to wake (a semaphore's), not ``key``'s

    @property
    def safe_anytime(self) -> bool:
        """Whether running this call on any master at any later moment is harmless: a
        release, or the undo of a lost round, each an owner-checked delete (whoever holds
        the key later has another token).

        So drivers send them to masters they skip after a failure too, and send a release
        again with its script's source when a master answers NOSCRIPT after the round is
        over (an undo goes out with its source already). Either way a key left behind would
        leave the resource a master short of its fault tolerance until it expires (two such
        hiccups: nobody could lock it).
        """
        return self.verb in (Verb.RELEASE, Verb.UNDO)

    def command(self) -> tuple[Any, ...]:
        """The command as sent in the common case (EVALSHA, or PTTL for inspection)."""
        if self.verb is Verb.INSPECT:
            return ("PTTL", self.key)
        if self.verb is Verb.PEEK:
            return ("GET", self.key)
        return ("EVALSHA", _SCRIPTS[self.verb].sha, *self._keys_and_argv())

    def packed(self) -> bytes:
        """:meth:`command` in RESP, as the sync driver sends it: EVALSHA, the script's SHA1
        and the key count are packed once per verb (packing every argument anew was a
        fifth of a round's Python work)."""
        head = _HEADS.get(self.verb._name_)  # by name: an Enum's __hash__ is Python code
        if head is None or self.slots or self.line:
            return pack(self.command())
        key = self.key.encode()
        parts = [key, self.token.encode()]
        if self.verb is Verb.ACQUIRE:
            parts[1:1] = (_BOOT, _FENCE_PREFIX + key)
            fence_ttl = _FENCE_TTL if self.fencing else b"0"
            parts += (b"%d" % self.ttl_ms, b"%d" % self.guard_ms, fence_ttl)
        elif self.verb is Verb.EXTEND:
            parts.append(b"%d" % self.ttl_ms)
        elif self.verb is Verb.RELEASE:
            parts[1:1] = (queue_key(self.key).encode(),)
        return pack_rest(head, parts)

    def fallback(self) -> tuple[Any, ...]:
        """The same call with the script's source, for a master that answered NOSCRIPT."""
        return ("EVAL", _SCRIPTS[self.verb].source, *self._keys_and_argv())

    def _keys_and_argv(self) -> tuple[Any, ...]:
        if self.verb is Verb.ACQUIRE or self.verb is Verb.PERMIT:
            fence_ttl = FENCE_TTL_MS if self.fencing else 0
            args: tuple[Any, ...] = (self.token, self.ttl_ms, self.guard_ms, fence_ttl)
            keys: tuple[str, ...] = (self.key, BOOT_KEY, fence_key(self.key))
            if self.verb is Verb.PERMIT:  # ACQUIRE's for each slot in turn (see PERMIT)
                slots = (k for slot in self.slots for k in (slot, fence_key(slot)))
                keys = (BOOT_KEY, queue_key(self.key), *slots)
                args = (*args, self.waiter)
            return (len(keys), *keys, *args)
        if self.verb is Verb.QUEUED:  # ACQUIRE's, each list with its extra item last
            count, *rest = self._replace(verb=Verb.ACQUIRE)._keys_and_argv()
            return (count + 1, *rest[:count], queue_key(self.key), *rest[count:], self.waiter)
        if self.verb is Verb.RELEASE:
            return (2, self.key, queue_key(self.line or self.key), self.token)
        if self.verb is Verb.UNDO:
            undone = self.slots or (self.key,)
            return (len(undone), *undone, self.token)
        if self.verb is Verb.FENCE:
            return (2, self.key, fence_key(self.key), self.token, self.fence, FENCE_TTL_MS)
        return (1, self.key, self.token, self.ttl_ms)

    def parse(self, reply: Any) -> Reply:
        """Turn a master's raw reply into a :class:`Reply`."""
        verb = self.verb
        if verb is _ACQUIRE or verb is Verb.QUEUED or verb is Verb.PERMIT:
            return _acquired(reply, self.slots)
        if verb is Verb.PEEK:
            return _peeked(reply)
        if verb is Verb.INSPECT:
            # PTTL: -2 no key, -1 key without expiry (not ours, but it does block), else ms.
            held = int(reply) != -2
            return Reply(Outcome.YES, int(reply)) if held else REFUSED
        if verb is Verb.FENCE:
            return _fenced(reply, self.fence)
        if isinstance(reply, list):  # RELEASE: {2, error}, released but nobody woken
            return Reply(Outcome.YES, note=f"not announced: {_error_text(reply[1])}")
        return GRANTED if int(reply) == 1 else REFUSED


def _peeked(reply: Any) -> Reply:
    """A peek's reply: the key's value (its owner text after the token), or nil."""
    if reply is None:
        return REFUSED
    if not isinstance(reply, bytes):  # bytes(n) of an integer reply would allocate n
        raise TypeError(f"GET answered a {type(reply).__name__}, not a string")
    return Reply(Outcome.YES, owner=reply.decode(errors="replace").partition(":")[2])


def _acquired(reply: Any, slots: tuple[str, ...] = ()) -> Reply:
    """An acquire's reply: ``{won, pttl, guard}``, and a grant's fence fourth (0 when not
    fenced), and a permit's grant its slot's position in ``slots`` fifth; a guard of 0 is
    the one declared."""
    if reply == _PLAIN_GRANT:  # the common replies first, in as few steps as they allow
        return GRANTED
    won, pttl, guard = reply[:3]
    if won == 1 and guard == 0 and len(reply) == 4:
        return _granted(reply[3])
    longer = int(guard) or None
    if won == 1:
        fence = (_fence_of(reply[3]) or None) if len(reply) > 3 else None
        slot = slots[reply[4]] if len(reply) > 4 else None
        return Reply(Outcome.YES, guard_ms=longer, fence=fence, slot=slot)
    return Reply(_ACQUIRE_OUTCOMES[won], int(pttl), guard_ms=longer)


def _granted(fence: Any) -> Reply:
    """A fenced grant's reply. The masters of one round mostly answer the same fence, so
    the last one made is kept and handed out again (a reply is read for every master)."""
    global _last_grant  # noqa: PLW0603 - one slot, replaced whole: safe between threads
    last = _last_grant
    if last.fence == fence and type(fence) is int:
        return last
    last = _last_grant = Reply(Outcome.YES, None, None, None, None, _fence_of(fence) or None)
    return last


def _fenced(reply: Any, fence: int) -> Reply:
    """A fence's write-back: the counter now (at least our fence), or 0 when the key is
    not ours there."""
    counter = _fence_of(reply)
    return Reply(Outcome.YES, fence=counter) if counter >= fence > 0 else REFUSED


def _fence_of(value: Any) -> int:
    """A fence counter as a master sent it: an integer from 0 (none) below 2**53."""
    if type(value) is not int or not 0 <= value < 2**53:
        raise TypeError(f"a fence counter must be an integer below 2**53, not {value!r}")
    return value


def _error_text(raw: bytes | str) -> str:
    """A script's error as the master worded it, without the script's line number
    (Redis 6.2 writes ``@user_script: 4: ...``, 7 writes ``ERR ...``)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return re.sub(r"^(@user_script: ?\d+: |ERR )", "", text)


_ACQUIRE = Verb.ACQUIRE
#: The common replies, made once: a reply is parsed for every master in every round.
GRANTED = Reply(Outcome.YES)
REFUSED = Reply(Outcome.NO)
_PLAIN_GRANT = [1, 0, 0, 0]  # an unfenced grant, as the master sends it
_last_grant = GRANTED


def loads() -> list[tuple[str, str, str]]:
    """SCRIPT LOAD for every script, sent once per new connection: EVALSHA then finds
    them, and a reply that comes late cannot be a NOSCRIPT nobody reads (a late release
    would be dropped unseen). A master that flushes its scripts later is still served by
    the NOSCRIPT fallback."""
    return [("SCRIPT", "LOAD", script.source) for script in _SCRIPTS.values()]


def identify() -> list[tuple[str, str]]:
    """The INFO commands sent with :func:`loads` on every new connection: what the server
    says it is (``_server.ServerFacts``) decides whether its votes count
    (``health.Identities``). In the connection's first write, so no round trip of its own."""
    return [("INFO", section) for section in INFO_SECTIONS]


def server_facts(replies: Sequence[Any]) -> ServerFacts | str:
    """The facts in :func:`identify`'s replies, or why there are none (an error reply)."""
    for reply in replies:
        if isinstance(reply, Exception):
            return f"{type(reply).__name__}: {reply}"
    return ServerFacts.from_info(parse_info(b"".join(bytes(r) for r in replies)))


_ACQUIRE_OUTCOMES = {1: Outcome.YES, 0: Outcome.NO, 2: Outcome.ABSTAIN}

_BOOT = BOOT_KEY.encode()
_FENCE_PREFIX = FENCE_PREFIX.encode()
_FENCE_TTL = b"%d" % FENCE_TTL_MS


def _head(verb: Verb) -> bytes:
    """The packed start of ``verb``'s EVALSHA, up to its key count (see Call.packed)."""
    example = Call(verb, "").command()
    return pack_head(len(example), example[:3])


#: Not for QUEUED, FENCE and PERMIT: only blocked waiters, fences the masters disagreed
#: on and semaphores send them, packed generically (as are a semaphore's UNDO and RELEASE).
_HEADS: dict[str, bytes] = {
    verb._name_: _head(verb)
    for verb in _SCRIPTS
    if verb not in (Verb.QUEUED, Verb.FENCE, Verb.PERMIT)
}


def is_noscript(error: BaseException) -> bool:
    """Whether an error reply means the master lost its script cache (restart, FLUSH)."""
    return str(error).startswith("NOSCRIPT") or type(error).__name__ == "NoScriptError"

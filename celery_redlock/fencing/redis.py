"""A fenced write for data that lives in Redis: a value and the fence that wrote it, kept
together in one hash, set by one Lua script.

Layout: the key is a hash with two fields, ``value`` (the data) and ``fence`` (the fence
of the write that set it, in decimal). One key rather than a value key beside a fence
key: the two cannot part (one expiry, one ``DEL``, one cluster slot), and no fence key
outlives its data. Other fields of the hash are left alone. Read it with
:func:`fenced_get`, or ``HGET key value``.

The script compares and writes on the server, so no other client runs between the two.
It compares the fences as decimal text, exactly (Lua's numbers are doubles, which cannot
tell fences apart beyond 2**53), and refuses what it cannot read: a stored fence that is
not a canonical positive integer, or a key that is not a hash, is an error naming it,
never overwritten.

Expiry: ``expire`` (seconds, a float or a ``timedelta``) sets the key's time to live on
every accepted write, and a write without it makes the key persistent, as ``SET`` does.
When the key expires its fence goes with it, and a stale holder could then create it
anew: give fenced data no expiry shorter than a holder may be paused, or none.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

from celery_redlock._core.durations import Seconds, seconds
from celery_redlock.exceptions import ConfigurationError, FenceRejected, LockError
from celery_redlock.fencing import as_fence

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "FENCE_FIELD",
    "VALUE_FIELD",
    "Fenced",
    "fenced_get",
    "fenced_get_async",
    "fenced_set",
    "fenced_set_async",
]

#: The hash fields the fenced write keeps: the data, and the fence that wrote it.
VALUE_FIELD = "value"
FENCE_FIELD = "fence"

#: Redis keeps key expiry in milliseconds; a float holds whole ones exactly up to 2**53.
_MAX_EXPIRE_MS = 2**53

Value = bytes | str | int | float

# KEYS[1] the fenced hash; ARGV[1] our fence (decimal, no leading zero); ARGV[2] the
# value; ARGV[3] time to live in ms (0: none, the key is made persistent).
# Returns {1} written; {0, standing} refused, a higher fence stands; {2, stored} refused,
# the stored fence is not a canonical positive integer of at most 19 digits; {3, type}
# refused, the key holds another type than a hash.
#
# higher(a, b) compares two canonical decimals exactly: by length, then as two parts of at
# most 10 digits each, which a double holds exactly.
SET_SCRIPT = """
local function higher(a, b)
  if #a ~= #b then return #a > #b end
  local cut = #a - 9
  if cut > 0 then
    local ha, hb = tonumber(string.sub(a, 1, cut)), tonumber(string.sub(b, 1, cut))
    if ha ~= hb then return ha > hb end
    return tonumber(string.sub(a, cut + 1)) > tonumber(string.sub(b, cut + 1))
  end
  return tonumber(a) > tonumber(b)
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then return {3, kind} end
local standing = redis.call('HGET', KEYS[1], 'fence')
if standing then
  if #standing > 19 or not string.find(standing, '^[1-9][0-9]*$') then
    return {2, standing}
  end
  if higher(standing, ARGV[1]) then return {0, standing} end
end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'fence', ARGV[1])
if ARGV[3] == '0' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {1}
"""


class Fenced(NamedTuple):
    """A fenced key as read: its value, and the fence of the write that set it (None for a
    hash that no fenced write has set)."""

    value: bytes | str | None
    fence: int | None


def fenced_set(
    client: redis.Redis,
    key: str | bytes,
    value: Value,
    fence: int,
    *,
    expire: Seconds | None = None,
) -> None:
    """Set ``key``'s value to ``value`` and its fence to ``fence``, if the stored fence is
    absent or not higher (one script, atomic on the server).

    An equal fence is accepted: fences are unique per acquisition, so it is the same
    holder writing again. Raises ``FenceRejected`` with the key unchanged: ``reason``
    ``"higher"`` with the standing fence, or ``"unreadable"`` (a stored fence that is not
    one, a key of another type).
    """
    ours, args = _arguments(value, fence, expire)
    script = client.register_script(SET_SCRIPT)
    _outcome(script(keys=[key], args=args), key, ours)


async def fenced_set_async(
    client: redis.asyncio.Redis,
    key: str | bytes,
    value: Value,
    fence: int,
    *,
    expire: Seconds | None = None,
) -> None:
    """:func:`fenced_set` on an asyncio client."""
    ours, args = _arguments(value, fence, expire)
    script = client.register_script(SET_SCRIPT)
    _outcome(await script(keys=[key], args=args), key, ours)


def fenced_get(client: redis.Redis, key: str | bytes) -> Fenced | None:
    """The value and fence at ``key`` (None if there is no such key), in one ``HMGET``."""
    return _read(key, client.hmget(key, [VALUE_FIELD, FENCE_FIELD]))


async def fenced_get_async(client: redis.asyncio.Redis, key: str | bytes) -> Fenced | None:
    """:func:`fenced_get` on an asyncio client."""
    return _read(key, await client.hmget(key, [VALUE_FIELD, FENCE_FIELD]))


def _arguments(value: Value, fence: int, expire: Seconds | None) -> tuple[int, list[Any]]:
    ours = as_fence(fence)
    if isinstance(value, bool) or not isinstance(value, (bytes, str, int, float)):
        raise ConfigurationError(
            f"value must be bytes, str, int or float, not {type(value).__name__}"
        )
    return ours, [str(ours), value, _expire_ms(expire)]


def _expire_ms(expire: Seconds | None) -> int:
    if expire is None:
        return 0
    ms = math.ceil(seconds(expire, "expire") * 1000)  # never 0, which would mean none
    if ms > _MAX_EXPIRE_MS:
        raise ConfigurationError(f"expire {expire!r} is beyond the longest TTL (2**53 ms)")
    return ms


def _text(raw: Any) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _outcome(reply: Any, key: str | bytes, ours: int) -> None:
    """Raise for a refusal, as the script's header describes its replies."""
    code = int(reply[0])
    if code == 1:
        return
    target = f"redis key {key!r}"
    found = _text(reply[1])
    if code == 0:
        raise FenceRejected(target, ours, int(found))
    if code == 2:
        raise FenceRejected(
            target, ours, None, reason="unreadable", found=f"its stored fence is not one: {found!r}"
        )
    raise FenceRejected(
        target, ours, None, reason="unreadable", found=f"it holds a {found}, not a fenced hash"
    )


def _read(key: str | bytes, reply: list[Any]) -> Fenced | None:
    value, raw = reply
    if value is None and raw is None:
        return None
    if raw is None:
        return Fenced(value, None)
    text = _text(raw)
    if not (text.isascii() and text.isdigit() and text[0] != "0" and len(text) <= 19):
        raise LockError(f"redis key {key!r} holds no readable fence: {text!r}")
    return Fenced(value, int(text))

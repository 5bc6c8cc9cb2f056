"""A master's reply as its vote: the one step both drivers share."""

from __future__ import annotations

import reprlib
from typing import Any

from celery_redlock._core.protocol import GRANTED, Call, Outcome, Vote

#: The vote of a master whose reply a round did not wait for: it settled first, or it was
#: sent without waiting (a release's clean-up). One wording, whichever driver ran it.
SETTLED_WITHOUT = "settled without it"
NOT_AWAITED = "not awaited"


def timed_out(timeout: float) -> str:
    """The vote of a master that sent no reply within the per-master ``timeout``."""
    return f"TimeoutError: no reply within {timeout * 1000:.0f} ms"


#: Shows a master's unexpected reply in a vote: short, and safe for any nesting depth.
_shown = reprlib.Repr()
_shown.maxlevel, _shown.maxlist, _shown.maxstring, _shown.maxother = 3, 4, 80, 80


def unexpected(reply: object, why: Exception) -> str:
    """Why a reply that ``Call.parse`` refused (``why``) is an ERROR vote, in both drivers'
    words: whatever a master sends is a vote, never an exception out of a round."""
    return f"unexpected reply {_shown.repr(reply)}: {why}"


def vote_of(name: str, call: Call, reply: Any, problem: str | None, granted: Vote) -> Vote:
    """A master's well-formed reply as its vote, the same in both drivers: an ERROR vote
    when the master may not vote (``problem``: it evicts, or is another master), or when
    ``Call.parse`` refuses the reply; ``granted`` is the caller's ready yes-vote."""
    if problem is not None:
        return Vote(name, Outcome.ERROR, error=problem)
    try:
        parsed = call.parse(reply)
    except Exception as exc:  # any malformed reply is an ERROR vote
        return Vote(name, Outcome.ERROR, error=unexpected(reply, exc))
    if parsed is GRANTED:
        return granted
    outcome, pttl_ms, owner, note, guard_ms, fence, slot = parsed
    return Vote(name, outcome, pttl_ms, note, owner, guard_ms, fence, slot)

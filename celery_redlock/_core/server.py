"""What a master says it is: the facts from its ``INFO`` reply that decide whether it may vote.

Both the lock path (once per new connection) and the operator views (``status``/``check``)
read these, so the rules live here once:

- **identity** is the server's ``run_id``, not how the user spelled its address: two
  spellings of one server (``127.1`` and ``localhost``, a unix socket and its TCP port)
  must never count as two votes;
- **eviction**: a master with a memory limit and any policy but ``noeviction`` may drop
  our lock keys (``volatile-*``: they have TTLs) or the boot marker (``allkeys-*``) under
  memory pressure from other data, which silently frees a held lock on that master;
- **mode**: a cluster node refuses our two-key acquire script (CROSSSLOT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["INFO_SECTIONS", "ServerFacts", "parse_info"]

#: The INFO sections the facts come from (Redis 6.2 takes one section per INFO call).
INFO_SECTIONS = ("server", "memory")


def parse_info(text: str | bytes) -> dict[str, str]:
    """An ``INFO`` reply's ``field:value`` lines as a dict (section headers skipped)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
    return fields


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """The facts of one server that the lock depends on, as its INFO reported them."""

    run_id: str | None
    version: str | None
    mode: str | None  # standalone, cluster or sentinel
    maxmemory: int
    maxmemory_policy: str | None

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ServerFacts:
        """From INFO fields, as :func:`parse_info` or redis-py's ``client.info()`` give
        them (redis-py turns numbers into ints; both forms are accepted)."""

        def text(name: str) -> str | None:
            value = info.get(name)
            return None if value is None else str(value)

        try:
            maxmemory = int(info.get("maxmemory", 0) or 0)
        except (TypeError, ValueError):
            maxmemory = 0
        return cls(
            text("run_id"),
            text("redis_version"),
            text("redis_mode"),
            maxmemory,
            text("maxmemory_policy"),
        )

    @property
    def evicts(self) -> bool:
        """Whether memory pressure can make this server drop keys it was asked to keep.

        ``maxmemory 0`` means no limit (on 64-bit builds), so no policy ever applies.
        """
        return self.maxmemory > 0 and (self.maxmemory_policy or "noeviction") != "noeviction"

    @property
    def eviction_problem(self) -> str | None:
        """Why this server must not vote, in words for an error or a log line; or None."""
        if not self.evicts:
            return None
        return (
            f"maxmemory-policy {self.maxmemory_policy} with maxmemory {self.maxmemory}:"
            " it may evict lock keys (or the boot marker) under memory pressure; use"
            " noeviction (or maxmemory 0) on lock masters"
        )

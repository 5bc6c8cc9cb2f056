"""The simulated cluster: masters, the network between them and the clients, and the log.

It routes messages the way connections do: each client has one connection per master
(the sync driver's design) whose order the network keeps; a connection that failed or
timed out is replaced (a new *epoch*), and what was still in flight on the old one may
arrive late, as it can through a real proxy or a paused server. A master that is down
refuses at once; one that crashed with a request in flight resets it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery_redlock._core import replies
from celery_redlock._core.protocol import Call, Outcome
from celery_redlock._core.quorum import Lease, Vote
from tests.history import Grant, Window
from tests.simulation.engine import Action, Loop, Network
from tests.simulation.master import SimMaster

if TYPE_CHECKING:
    from tests.simulation.driver import SimClient

OnVote = Callable[[Vote], None]


@dataclass(slots=True)
class Holding:
    """A lease as its holder sees it, in true time: from hand-over to its valid_until."""

    key: str
    holder: str
    token: str
    start: float
    valid_until: float


@dataclass(slots=True)
class SimHistory:
    """Every validity window and every fence handed over, in true time (which only the
    simulator can read: a fence is handed over at the very moment the algorithm returns
    it, so its ``Grant`` is asked and handed at that moment)."""

    open: dict[str, Holding] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)

    def acquired(self, client: SimClient, lease: Lease, now: float) -> None:
        until = client.clock.true_at(lease.valid_until)
        self.open[lease.token] = Holding(lease.key, client.name, lease.token, now, until)
        if lease.fence is not None:
            self.grants.append(Grant(lease.key, client.name, lease.token, lease.fence, now, now))

    def extended(self, client: SimClient, lease: Lease) -> None:
        self.open[lease.token].valid_until = client.clock.true_at(lease.valid_until)

    def ended(self, token: str, now: float) -> None:
        """The holder stops (releasing, or told it lost the lock): its window closes."""
        h = self.open.pop(token)
        self.windows.append(Window(h.key, h.holder, h.token, h.start, min(h.valid_until, now)))

    def close_all(self, now: float) -> list[Window]:
        for token in list(self.open):
            self.ended(token, now)
        return self.windows


@dataclass
class World:
    """Everything one schedule runs on."""

    loop: Loop
    net: Network
    masters: list[SimMaster]
    master_timeout: float
    history: SimHistory = field(default_factory=SimHistory)
    clients: dict[int, SimClient] = field(default_factory=dict)
    log: list[str] | None = None

    def trace(self, message: str) -> None:
        if self.log is not None:
            self.log.append(f"{self.loop.now:10.6f} {message}")

    # --- requests ------------------------------------------------------------------------

    def send_call(self, client: SimClient, i: int, call: Call, on_vote: OnVote | None) -> None:
        """Send ``call`` to master ``i``; its vote comes back through ``on_vote``."""
        master = self.masters[i]
        link = (client.id, i, client.epochs[i])
        if not master.up:
            self._answer(link, i, on_vote, Vote(master.name, Outcome.ERROR, error="refused"))
            return
        incarnation = master.incarnation

        def serve() -> None:
            self._serve(master, call, link, on_vote, client.name)

        def arrive() -> None:
            if not master.up or master.incarnation != incarnation:
                error = Vote(master.name, Outcome.ERROR, error="connection reset")
                self._answer(link, i, on_vote, error)
            elif master.paused:
                master.backlog.append(serve)
            else:
                serve()

        self.net.deliver((*link, "to"), i, arrive)

    def _serve(
        self,
        master: SimMaster,
        call: Call,
        link: tuple[int, int, int],
        on_vote: OnVote | None,
        who: str,
    ) -> None:
        raw, woken = master.execute(call, self.loop.now)
        if self.log is not None:
            self.trace(
                f"{master.name} {call.verb.value} {call.token or call.key} from {who}: {raw}"
            )
        if woken is not None:
            self._publish(master, woken)
        vote = replies.vote_of(master.name, call, raw, None, Vote(master.name, Outcome.YES))
        self._answer(link, master.index, on_vote, vote)

    def _answer(
        self, link: tuple[int, int, int], i: int, on_vote: OnVote | None, vote: Vote
    ) -> None:
        if on_vote is not None:
            self.net.deliver((*link, "from"), i, lambda: on_vote(vote))

    def subscribe(
        self, client: SimClient, i: int, channel: str, listener: int, done: Action
    ) -> None:
        """SUBSCRIBE on master ``i``; ``done`` runs when confirmed (or refused: skipped)."""
        master = self.masters[i]
        if not master.up:
            self.loop.soon(done)
            return
        incarnation = master.incarnation

        def serve() -> None:
            master.subscribers.setdefault(channel, {})[client.id] = listener
            self.net.deliver((client.id, i, -1, "from"), i, done)

        def arrive() -> None:
            if not master.up or master.incarnation != incarnation:
                return  # the connection died: the client's listen times out
            if master.paused:
                master.backlog.append(serve)
            else:
                serve()

        self.net.deliver((client.id, i, -1, "to"), i, arrive)

    def unsubscribe(self, client: SimClient, i: int, channel: str) -> None:
        """The client closes its subscription to master ``i``: the master forgets it when
        the close arrives (behind anything sent before it), and at once if it crashed."""
        master = self.masters[i]

        def serve() -> None:
            subscribers = master.subscribers.get(channel, {})
            subscribers.pop(client.id, None)
            if not subscribers:
                master.subscribers.pop(channel, None)

        def arrive() -> None:
            if master.paused:
                master.backlog.append(serve)
            elif master.up:
                serve()

        self.net.deliver((client.id, i, -1, "to"), i, arrive)

    def _publish(self, master: SimMaster, channel: str) -> None:
        for cid, listener in master.subscribers.get(channel, {}).items():
            news = functools.partial(self.clients[cid].news, listener)
            self.net.deliver((cid, master.index, -1, "from"), master.index, news)

    # --- faults --------------------------------------------------------------------------

    def crash(self, i: int) -> None:
        self.trace(f"{self.masters[i].name} crashes")
        self.masters[i].crash()

    def restart(self, i: int) -> None:
        self.trace(f"{self.masters[i].name} restarts")
        self.masters[i].restart()

    def pause(self, i: int) -> None:
        if self.masters[i].up:
            self.trace(f"{self.masters[i].name} paused")
            self.masters[i].pause()

    def resume(self, i: int) -> None:
        self.trace(f"{self.masters[i].name} resumed")
        for serve in self.masters[i].resume():
            serve()

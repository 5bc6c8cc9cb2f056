"""Redlock for threads: the sync driver around the shared algorithm, and the lock handle.

Usage::

    from celery_redlock import Redlock

    dlm = Redlock(["redis://r1:6379/0", "redis://r2:6379/0", "redis://r3:6379/0"])
    with dlm.lock("report:2024-06", ttl=30, blocking=True, timeout=10) as lock:
        ...  # lock.validity says how many seconds are still safely ours

How a round runs: each operation has one connection per master to itself (see
:class:`_Driver`). The command goes out to every master before any reply is read
(scatter), then replies are read as they arrive (``poll`` over all sockets at once) until
the round is settled, which is as soon as a quorum said yes or can no longer say it. A
master that has not answered by then keeps its reply owed on that connection and is
drained at its next use; commands on one connection stay in order, so a clean-up never
overtakes the call it cleans up after. A master that misses the per-master timeout is
skipped for a short cool-down (except by releases), and disconnected once a reply it owes
is overdue.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import math
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import AuthenticationError, InvalidResponse, RedisError

from celery_redlock._core import connect, quorum, resp, rounds
from celery_redlock._core.connect import Endpoint
from celery_redlock._core.durations import Seconds
from celery_redlock._core.handle import HandleBase, Renewal
from celery_redlock._core.manager import AcquireOptions, ManagerBase
from celery_redlock._core.protocol import Call, identify, is_noscript, loads, server_facts
from celery_redlock._core.quorum import Listen, Round, Vote
from celery_redlock._core.resp import INCOMPLETE
from celery_redlock._core.roster import Roster
from celery_redlock.exceptions import LockLost

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Lock", "Redlock"]

#: Failures that mean "this master did not answer", as opposed to an error reply.
_IO_ERRORS = (redis.ConnectionError, redis.TimeoutError, InvalidResponse, OSError)

#: A non-blocking socket's "not now" (a TLS socket may want to read in order to write).
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

#: Sent on every new connection, ahead of the first call (see ``protocol.loads`` and
#: ``protocol.identify``): our scripts, then what the server says it is.
_LOADS = loads()
_IDENTIFY = identify()
_PACKED_OPENING = b"".join(map(resp.pack, [*_LOADS, *_IDENTIFY]))

#: Bytes asked of the socket per read: every reply the driver expects fits many times.
_CHUNK = 65536

# Bumped in a forked child: connections inherited from the parent must never be used
# (their sockets are the parent's), so every cache below checks it.
_generation = 0


def _after_fork() -> None:
    global _generation  # noqa: PLW0603
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


class _Link:
    """One connection to one master, used by one thread.

    The socket is ours end to end (:func:`connect.open_socket`, TLS included, bounded by
    the timeout), non-blocking once connected: the driver polls every master's socket at
    once, so a per-socket timeout would only make Python poll again before each send and
    receive. Replies are parsed from what the driver reads (:mod:`celery_redlock._core.resp`).

    ``owed`` holds one entry per reply still due for a command whose round settled
    without it: the call, for a release (sent again with its script's source if the late
    reply is NOSCRIPT: a master that lost its scripts would otherwise drop it unseen),
    the connection's :class:`_Opening` for the replies to its first write, else None.
    ``owed_since`` is when the oldest of them was sent: a master that owes a reply for
    longer than the per-master timeout is hung, even if every round settled without it.

    A link dropped without :meth:`reset` (a lock manager never closed) still closes its
    socket, through a finalizer rather than ``__del__``.
    """

    __slots__ = (
        "__weakref__",
        "clock",
        "closer",
        "endpoint",
        "identities",
        "index",
        "name",
        "owed",
        "owed_since",
        "proven",
        "reader",
        "sock",
        "timeout",
    )

    def __init__(self, roster: Roster, index: int) -> None:
        self.endpoint = roster.endpoints[index]
        self.name = roster.names[index]
        self.timeout = roster.timeout
        self.clock = roster.clock
        self.identities = roster.identities
        self.index = index
        self.sock: socket.socket | None = None
        self.closer: weakref.finalize[[], _Link] | None = None
        self.reader = resp.new_reader()
        self.owed: collections.deque[Call | _Opening | None] = collections.deque()
        self.owed_since = 0.0
        self.proven = False  # answered before: a failure may just mean the master restarted

    def _open(self) -> tuple[socket.socket, bytes]:
        """Connect; returns the socket and what to send ahead of the first call: the
        log-in (:meth:`Endpoint.handshake`), our scripts and the INFO commands. Their
        replies are owed and drained like any other, before the first call's reply, so
        the first vote already knows what the server is (see :class:`_Opening`)."""
        handshake = self.endpoint.handshake()  # first: a credential provider may fail
        try:
            sock = connect.open_socket(self.endpoint, self.timeout)
        except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
            raise connect.unreachable(self.name, exc) from exc
        sock.setblocking(False)
        self.sock = sock
        self.closer = weakref.finalize(self, sock.close)
        self.reader = resp.new_reader()
        opening = _Opening(self, [connect.command_name(c) for c in handshake])
        self.owed_since = self.clock()
        self.owed.extend([opening] * opening.size)
        return sock, b"".join(map(resp.pack, handshake)) + _PACKED_OPENING

    def send(self, data: bytes) -> int:
        """Send, reconnecting once if a connection that worked before turns out dead (its
        master restarted since); every call we make is safe to repeat. Returns the file
        descriptor the reply will come on."""
        sock = self.sock
        sent = 0
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # nothing went out: the careful path below tries again, and copes
            if sent == len(data):  # the usual case, in one call
                fd = sock.fileno()
                return fd if fd >= 0 else _open_fd(sock)
        try:
            return self._send(data, sent)
        except _IO_ERRORS:
            if not self.proven:
                raise
            self.reset()
            return self._send(data, 0)

    def _send(self, data: bytes, sent: int) -> int:
        """Send what is left of ``data`` after ``sent`` bytes, connecting first if needed."""
        sock = self.sock
        if sock is None:
            sock, opening = self._open()
            data = opening + data  # one write: the call goes out even if no reply comes
        elif not sent:
            try:
                sent = sock.send(data)
            except _WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                raise self._broken("writing", exc) from exc
        if sent < len(data):
            self._send_rest(sock, memoryview(data)[sent:])
        return _open_fd(sock)

    def _send_rest(self, sock: socket.socket, rest: memoryview) -> None:
        """The socket's buffer is full (a slow master): wait for room, up to the timeout."""
        deadline = time.monotonic() + self.timeout
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        while rest:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(math.ceil(left * 1000)):
                self._drop()
                raise redis.TimeoutError("timed out while writing")
            try:
                rest = rest[sock.send(rest) :]
            except _WOULD_BLOCK:
                continue
            except OSError as exc:
                raise self._broken("writing", exc) from exc

    def take(self) -> Any:
        """The next reply if it is all here, reading what the socket holds without waiting;
        else ``INCOMPLETE``. An error reply is returned (a RedisError), not raised."""
        reader = self.reader
        reply = reader.gets()
        if reply is not INCOMPLETE:
            return reply
        sock = self.sock
        if sock is None:
            raise redis.ConnectionError("not connected")
        while True:
            try:
                data = sock.recv(_CHUNK)
            except _WOULD_BLOCK:
                return INCOMPLETE
            except OSError as exc:
                raise self._broken("reading", exc) from exc
            if not data:
                raise self._broken("reading", ConnectionResetError("closed by the master"))
            reader.feed(data)
            reply = reader.gets()
            if reply is not INCOMPLETE:
                return reply
            # Loop: a TLS socket can hold decrypted bytes that poll would not report.

    def _broken(self, doing: str, exc: OSError) -> redis.ConnectionError:
        self._drop()
        return redis.ConnectionError(f"error while {doing}: {exc}")

    def _drop(self) -> None:
        """Close the socket (only close: a shutdown would cut a forked parent's too)."""
        closer = self.closer
        self.sock = self.closer = None
        if closer is not None:
            closer()

    def owe(self, now: float, again: Call | None = None) -> None:
        if not self.owed:
            self.owed_since = now
        self.owed.append(again)

    def settle(self, reply: Any) -> None:
        """An owed reply arrived: a NOSCRIPT to a call kept for it sends the call again
        with its script's source (owed in turn). Raises a ConnectionError when it fails
        the connection (a refused log-in, see :class:`_Opening`)."""
        again = self.owed.popleft()
        if isinstance(again, _Opening):
            again.add(reply)
        elif again is not None and isinstance(reply, RedisError) and is_noscript(reply):
            self.send(resp.pack(again.fallback()))
            self.owe(self.clock())

    def overdue(self, now: float, timeout: float) -> bool:
        """Whether replies owed for longer than ``timeout`` are still missing (the ones
        that did arrive are read and dropped first)."""
        if not self.owed or now - self.owed_since <= timeout:
            return False  # nothing owed, or not for long: the next read drains it in order
        while self.owed and (reply := self.take()) is not INCOMPLETE:
            self.settle(reply)
            self.owed_since = now  # what is still owed was sent no earlier than this
        return bool(self.owed) and now - self.owed_since > timeout

    def fileno(self) -> int | None:
        fd = -1 if self.sock is None else self.sock.fileno()
        return None if fd < 0 else fd

    def reset(self) -> None:
        self._drop()
        self.owed.clear()
        self.proven = False


class _Opening:
    """The replies to a new connection's first write, in order: the log-in (each must be
    ``+OK``), our scripts' loads (an error changes nothing: an ACL without SCRIPT is served
    by the NOSCRIPT fallback), then INFO's, collected and recorded as the server's facts.

    An error reply to a log-in command fails the connection, naming the command (never
    its arguments: AUTH's are the password), as redis-py's connect did; so does an
    authentication error to any of them (NOAUTH: the master wants a password we were
    not given). The link's master then cools down, as after any failed connect.
    """

    __slots__ = ("handshake", "identities", "index", "master", "replies", "seen", "size")

    def __init__(self, link: _Link, handshake: list[str]) -> None:
        self.master = link.name
        self.identities = link.identities
        self.index = link.index
        self.handshake = handshake
        self.size = len(handshake) + len(_LOADS) + len(_IDENTIFY)
        self.seen = 0
        self.replies: list[Any] = []

    def add(self, reply: Any) -> None:
        step = self.seen
        self.seen += 1
        if isinstance(reply, RedisError):
            if step < len(self.handshake):
                raise connect.refused(self.handshake[step], self.master, reply)
            if isinstance(reply, AuthenticationError):
                raise connect.refused(self._command(step), self.master, reply)
        if self.seen > self.size - len(_IDENTIFY):
            self.replies.append(reply)
            if self.seen == self.size:
                self.identities.record(self.index, server_facts(self.replies))

    def _command(self, step: int) -> str:
        step -= len(self.handshake)
        return connect.command_name((_LOADS + _IDENTIFY)[step])


def _open_fd(sock: socket.socket) -> int:
    """The descriptor a reply will come on. ``Redlock.close()`` from another thread may have
    closed the socket under an operation in flight (its fileno is then -1): that operation
    meets a connection error, an ERROR vote like any other, not a ValueError from poll."""
    fd = sock.fileno()
    if fd < 0:
        raise redis.ConnectionError("the connection was closed (the lock manager was closed)")
    return fd


class _Driver:
    """Runs the shared algorithm's effects with blocking sockets.

    Each operation takes a set of connections (one per master) that no other operation
    uses while it runs, and leaves it for the next: a thread or greenlet reuses the set it
    left, and a pool of them, as gevent's, holds as many as ran at once. An operation cut
    off mid-round (a soft time limit, ``gevent.Timeout``, KeyboardInterrupt) closes its
    set: a reply still on its way would otherwise be read as the answer to the next call.
    """

    def __init__(self, roster: Roster) -> None:
        self._m = roster
        self._free: list[tuple[int, list[_Link]]] = []  # (fork generation, links) not in use
        self._all: weakref.WeakSet[_Link] = weakref.WeakSet()

    def run(self, algorithm: quorum.Algorithm) -> Any:
        """Drive one operation to its end; the loop the asyncio driver mirrors."""
        listener: _Listener | None = None
        result: Any = None
        links = self.links()
        try:
            while True:
                effect = algorithm.send(result)
                if isinstance(effect, Round):
                    try:
                        result = self.round(effect, links)
                    except BaseException:
                        for link in links:
                            link.reset()
                        raise
                elif isinstance(effect, Listen):
                    listener = listener or _Listener(self._m)
                    listener.listen(effect.channel)
                    result = None
                else:
                    result = (listener or _Listener.idle).wait(effect.seconds)
        except StopIteration as stop:
            return stop.value
        finally:
            self._free.append((_generation, links))
            if listener is not None:
                listener.close()

    def links(self) -> list[_Link]:
        """A set of connections for one operation (list pop and append are atomic)."""
        while self._free:
            generation, links = self._free.pop()
            if generation == _generation:  # else the parent's, before a fork: dropped
                return links
        links = [_Link(self._m, i) for i in range(len(self._m))]
        self._all.update(links)
        return links

    def close(self) -> None:
        for link in list(self._all):
            link.reset()

    def round(self, rnd: Round, links: list[_Link]) -> list[Vote]:
        m = self._m
        timeout = m.timeout
        targets = rnd.targets if rnd.targets is not None else range(len(links))
        health = m.health
        wait = rnd.wait
        now = m.clock()
        votes: list[Vote | None] = [None] * len(targets)
        waiting: dict[int, tuple[int, int]] = {}  # fd -> (position in votes, master)
        packed = rounds.packed(rnd)
        for pos, i in enumerate(targets):
            link = links[i]
            # Only a master owing replies or in its cool-down needs a closer look.
            if wait and (link.owed or health[i].down_until > now):
                vote = self._unusable(i, link, now, timeout, rnd)
                if vote is not None:
                    votes[pos] = vote
                    continue
            try:
                waiting[link.send(packed)] = (pos, i)
            except _IO_ERRORS as exc:
                votes[pos] = self._failed(i, link, exc)
        if not wait:
            for _pos, i in waiting.values():
                links[i].owe(now)
            return [
                v or rounds.unanswered(m, t, rnd, expired=False)
                for v, t in zip(votes, targets, strict=True)
            ]
        # The deadline runs from the end of the sends: a slow send must not use up the
        # time in which the other masters' replies are read.
        if waiting:
            self._collect(rnd, links, waiting, votes, m.clock() + timeout)
        return votes  # type: ignore[return-value]  # every position has its vote now

    def _unusable(self, i: int, link: _Link, now: float, timeout: float, rnd: Round) -> Vote | None:
        """Why master ``i`` gets no command this round (an ERROR vote), or None to send.

        Asked only of rounds waited for: clean-ups always go out, on the same connection
        as the call they clean up after, so that the master runs them in that order even
        if it is slow or was hung. Otherwise a master that still owes a reply older than the
        timeout is hung: it is failed now (its connection closed), before our commands
        can pile up in its socket buffers. A master in its cool-down is skipped, except
        by a release over a connection still open (:attr:`Call.safe_anytime`): never
        a new one, whose connect could block for the whole timeout.
        """
        try:
            hung = link.overdue(now, timeout)
        except _IO_ERRORS as exc:
            return self._failed(i, link, exc)
        if hung:
            return self._failed(i, link, redis.TimeoutError("replies overdue: the master hangs"))
        return rounds.excluded(self._m, i, now, rnd, connected=link.sock is not None)

    def _collect(
        self,
        rnd: Round,
        links: list[_Link],
        waiting: dict[int, tuple[int, int]],
        votes: list[Vote | None],
        deadline: float,
    ) -> None:
        """Read replies as they come until the round is settled or the deadline passes."""
        m = self._m
        clock = m.clock
        call = rnd.call
        count = quorum.Count(votes, len(links))
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        while waiting:
            remaining = rounds.patience(count, len(waiting), deadline, clock())
            events = poller.poll(math.ceil(remaining * 1000))
            if not events and remaining <= 0:
                break
            for fd, _event in events:
                pos, i = waiting[fd]
                vote = self._read(i, links[i], call)
                if vote is None:
                    moved = links[i].fileno()
                    if moved is not None and moved != fd:  # reconnected: follow the new socket
                        poller.unregister(fd)
                        del waiting[fd]
                        poller.register(moved, select.POLLIN)
                        waiting[moved] = (pos, i)
                    continue
                votes[pos] = vote
                count.add(vote)
                del waiting[fd]
                poller.unregister(fd)
        if not waiting:
            return
        now = m.clock()
        # Masters that did not answer keep their connection, owing the reply: a clean-up
        # sent next goes behind the call on it, in order. A master that stays silent is
        # found hung by the next round's overdue check, and only then disconnected.
        expired = now >= deadline
        again = rnd.call if rnd.call.safe_anytime else None
        for pos, i in waiting.values():
            links[i].owe(now, again)
            votes[pos] = rounds.unanswered(m, i, rnd, expired)

    def _read(self, i: int, link: _Link, call: Call) -> Vote | None:
        """Read what master ``i`` sent; its Vote, or None while its reply is still to come."""
        try:
            reply = link.take()
            while reply is not INCOMPLETE and link.owed:
                link.settle(reply)  # the answer to a round that settled without it
                reply = link.take()
        except _IO_ERRORS as exc:
            if not link.proven or link.owed:
                return self._failed(i, link, exc)
            link.reset()  # the master restarted since our last use: ask once more
            return self._resend(i, link, call.packed())
        if reply is INCOMPLETE:
            return None
        vote = rounds.judge(self._m, i, call, reply)
        if vote is None:  # NOSCRIPT: the master lost its scripts
            return self._resend(i, link, resp.pack(call.fallback()))
        if not isinstance(reply, RedisError):
            link.proven = True
        return vote

    def _resend(self, i: int, link: _Link, packed: bytes) -> Vote | None:
        try:
            link.send(packed)
        except _IO_ERRORS as exc:
            return self._failed(i, link, exc)
        return None

    def _failed(self, i: int, link: _Link, exc: BaseException) -> Vote:
        link.reset()
        return self._m.failed(i, exc)


class _Listener:
    """Subscriptions to one waiter's channel on every master, for one blocked acquisition.

    Connections are made per wait rather than kept: only a blocked caller pays for them,
    and the hand-off (release → message → our next round) stays a single round trip. A
    master that refuses the subscription (an error reply: an ACL without the channel) is
    warned of and left out, as one that does not answer is: the wait falls back on its
    timed poll there.

    Every message counts, the other masters' copies of one release included: each says
    that one more master freed the key for us, and the algorithm asks again once enough
    of them came (see ``quorum.acquire``).
    """

    idle: _Listener

    def __init__(self, roster: Roster | None) -> None:
        self._m = roster
        self._subs: dict[int, _Subscription] = {}  # by file descriptor
        self._heard = 0  # wake-ups read while listen() waited for its confirmations

    def listen(self, channel: str) -> None:
        m = self._m
        assert m is not None
        now = m.clock()
        deadline = now + m.timeout
        for i, endpoint in enumerate(m.endpoints):
            if m.health[i].skip_reason(now) is not None:
                continue
            try:
                sub = _Subscription(i, endpoint, m.timeout, channel)
            except OSError:
                continue  # unreachable: the wait falls back on its timed poll there
            self._subs[sub.sock.fileno()] = sub
        # Subscribed means confirmed: only then can no release slip past unheard.
        self._heard += self._poll(deadline, confirming=True)

    def wait(self, seconds: float) -> int:
        """Sleep up to ``seconds``, or until woken; returns how many wake-ups came (the
        first, and any other master's already here)."""
        heard, self._heard = self._heard, 0
        if heard:
            return heard  # came while listen() waited: no sleep, as in the asyncio driver
        if not self._subs or self._m is None:
            time.sleep(seconds)
            return 0
        return self._poll(self._m.clock() + seconds, confirming=False)

    def _poll(self, deadline: float, confirming: bool) -> int:
        """Read replies until every connection confirmed its subscription (``confirming``),
        or else until the first wake-up came, then those already here; returns how many
        wake-ups were read (``rounds.wake_ups``). Connections that fail or refuse are
        dropped."""
        assert self._m is not None
        poller = select.poll()
        for fd in self._subs:
            poller.register(fd, select.POLLIN)
        outstanding = set(self._subs)
        got = 0
        while outstanding:
            remaining = deadline - self._m.clock()
            if got and not confirming:
                remaining = 0  # woken: only pick up the copies already here
            events = poller.poll(max(0, math.ceil(remaining * 1000)))
            if not events:
                return got
            for fd, _event in events:
                sub = self._subs[fd]
                try:
                    replies = sub.read()
                except (*_IO_ERRORS, RedisError) as exc:
                    if not isinstance(exc, _IO_ERRORS):
                        self._m.subscription_refused(sub.index, exc)
                    poller.unregister(fd)
                    outstanding.discard(fd)
                    del self._subs[fd]
                    sub.close()
                    continue
                for reply in replies:
                    if reply[0] == b"subscribe":
                        outstanding.discard(fd)
                    got += rounds.wake_ups(reply, late=not confirming)
        return got

    def close(self) -> None:
        for sub in self._subs.values():
            sub.close()
        self._subs.clear()


class _Subscription:
    """One master's connection of a :class:`_Listener`: logged in (the endpoint's
    handshake, whose replies are checked first) and subscribed in one write."""

    __slots__ = ("handshake", "index", "reader", "sock")

    def __init__(self, index: int, endpoint: Endpoint, timeout: float, channel: str) -> None:
        self.index = index
        commands = endpoint.handshake()
        self.handshake = len(commands)
        self.reader = resp.new_reader()
        self.sock = connect.open_socket(endpoint, timeout)
        try:
            self.sock.sendall(b"".join(map(resp.pack, [*commands, ("SUBSCRIBE", channel)])))
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    def read(self) -> list[Any]:
        """The replies whole so far, after the log-in's; raises the error reply of one that
        refused (a RedisError), OSError or InvalidResponse when the connection fails."""
        while True:
            try:
                data = self.sock.recv(_CHUNK)
            except _WOULD_BLOCK:
                break
            if not data:
                raise ConnectionResetError("closed by the master")
            self.reader.feed(data)
            # Loop: a TLS socket can hold decrypted bytes that poll would not report.
        replies = []
        while (reply := self.reader.gets()) is not INCOMPLETE:
            if isinstance(reply, RedisError):
                if self.handshake:  # a refused log-in: a failure, not a refusal to wake us
                    raise redis.ConnectionError(str(reply))
                raise reply
            if self.handshake:
                self.handshake -= 1
            else:
                replies.append(reply)
        return replies

    def close(self) -> None:
        self.sock.close()


_Listener.idle = _Listener(None)


class Lock(HandleBase["Redlock"]):
    """A held lock. Release it (or leave a ``with`` block) to free it for others.

    ``validity`` is how many seconds it is still safely ours; ``valid`` turns False when
    that runs out, when it is released, or when automatic renewal reported it lost.
    """

    def __init__(self, manager: Redlock, lease: quorum.Lease, renewal: Any) -> None:
        super().__init__(manager, lease, renewal)
        self._mutex = threading.Lock()

    def release(self) -> bool:
        """Free the lock; True when a quorum of masters deleted our key.

        Renewal stops first, strictly: the mutex waits out an extension in flight.
        """
        with self._mutex:
            if self._released:
                return False
            self._released = True
        released, votes = self._manager._driver.run(
            quorum.release(self.key, self.token, self._manager.policy, self._lease.line)
        )
        return self._manager._released(self.resource, released, votes)

    def extend(self, ttl: Seconds | None = None) -> float:
        """Re-arm the lock to ``ttl`` seconds (default: its TTL); returns the new validity.

        Raises :class:`LockLost` when it is no longer ours (the handle turns invalid),
        :class:`QuorumUnavailable` when too few masters answered in time: then the
        validity is the shorter of the previous one and ``ttl`` from before the call,
        since late answers may have applied it.
        """
        with self._mutex:
            if self._released:
                raise LockLost(f"lock on {self.resource!r} was released", resource=self.resource)
            new_ttl = self._ttl if ttl is None else self._manager.settings.ttl(ttl)
            return self._extended(self._manager._driver.run(self._extension(new_ttl)))

    def _renew(self) -> float | None:
        """One renewal by the watchdog; the delay before the next, or None to stop."""
        with self._mutex:
            ttl = self._next_ttl()
            if ttl is None:
                return None
            return self._renewed(self._manager._driver.run(self._extension(ttl)))

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _renewable(lock: Lock) -> bool:
    return not lock._released and lock._lost is None


def _drop_finished(heap: list[tuple[float, int, Lock]]) -> None:
    """Pop the locks at the top of the heap that need no renewal (released or lost)."""
    while heap and not _renewable(heap[0][2]):
        heapq.heappop(heap)


#: Heap size from which the watchdog sweeps out finished locks (see ``_Watchdog``).
_COMPACT_MIN = 64


class _Watchdog:
    """One thread per lock manager renewing every auto-renewed lock when it falls due.

    A heap of due times rather than a thread per lock (Redisson's design): a worker holding
    many locks costs one idle thread. The thread exits when it has nothing to do.

    A lock taken per task must not cost a thread switch per task: ``add`` wakes the thread
    only when the new lock falls due before the moment the thread already means to look
    again (``_wake_at``). Waking it whenever its heap happened to be empty would, with one
    short task after another, wake it for every lock, only to find the lock of the task
    before released, drop it and sleep again: a GIL hand-off per task.

    A released lock stays in the heap until it reaches the top, so ``add`` pops finished
    locks off the top, and sweeps the whole heap whenever it has doubled since the last
    sweep (amortised O(1) per lock). Otherwise every lock of the last renewal interval
    would stay (all of a renewal interval's worth at a high task rate), each with its
    lease and votes, for the garbage collector to walk.
    """

    IDLE_EXIT = 5.0

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Lock]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = -math.inf  # when the thread looks at the heap next (-inf: busy)
        self._generation = _generation
        self._compact_at = _COMPACT_MIN

    def add(self, lock: Lock, due: float) -> None:
        with self._cond:
            if self._generation != _generation:  # forked: the parent's locks are not ours
                self._heap.clear()
                self._thread = None
                self._wake_at = -math.inf
                self._generation = _generation
            heap = self._heap
            _drop_finished(heap)
            if len(heap) >= self._compact_at:
                heap[:] = [entry for entry in heap if _renewable(entry[2])]
                heapq.heapify(heap)
                self._compact_at = max(_COMPACT_MIN, 2 * len(heap))
            heapq.heappush(heap, (due, next(self._seq), lock))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="celery-redlock-renewal", daemon=True
                )
                self._thread.start()
            elif due < self._wake_at:
                self._wake_at = due
                self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                lock = self._next_due()
                if lock is None:
                    self._thread = None
                    return
            delay = lock._renew()
            if delay is not None:
                self.add(lock, self._clock() + delay)

    def _next_due(self) -> Lock | None:
        """The next lock to renew, waiting until it is due; None after IDLE_EXIT idle."""
        idle_since = time.monotonic()
        try:
            while True:
                heap = self._heap
                _drop_finished(heap)
                now = self._clock()
                if heap:
                    if heap[0][0] <= now:
                        return heapq.heappop(heap)[2]
                    wait = heap[0][0] - now
                else:
                    wait = idle_since + self.IDLE_EXIT - time.monotonic()
                    if wait <= 0:
                        return None
                self._wake_at = now + wait
                self._cond.wait(wait)
        finally:
            self._wake_at = -math.inf  # renewing or gone: it looks at the heap when done


class Redlock(ManagerBase):
    """A lock manager over N independent Redis masters, shared freely between threads.

    ``masters``: URLs (``redis://``, ``rediss://``, ``unix://``), dicts of redis-py
    arguments, or ``redis.Redis`` clients (their connection settings are copied, with our
    timeouts). Options and their defaults are :class:`~celery_redlock.LockSettings`'s:
    ``master_timeout=0.1``, ``retry_count=3``, ``retry_delay=0.2``, ``drift_factor=0.01``,
    ``key_prefix="redlock:"``. Safe across ``fork()``: a child opens its own connections.
    """

    def __init__(self, masters: Sequence[Any], **options: Any) -> None:
        super().__init__(masters, **options)
        self._driver = _Driver(self.roster)
        self._watchdog = _Watchdog(self.clock)

    def acquire(
        self, resource: str, ttl: Seconds, **options: Unpack[AcquireOptions]
    ) -> Lock | None:
        """Lock ``resource`` for ``ttl`` seconds; the handle, or None if others hold it.

        ``blocking=False`` (default) answers at once when the resource is held, retrying
        only a race or an outage (``retry_count`` times). ``blocking=True`` waits for the
        holder's release (woken by its message, not by polling) up to ``timeout``
        seconds (None: no limit). ``auto_renew=True`` keeps the lock alive every
        ``renew_every`` seconds (default ttl/3) until released or ``max_hold`` seconds;
        if it cannot, the handle turns invalid and ``on_lost(lock, error)`` is called.
        ``owner`` (e.g. ``"task-id@host"``) is stored after the token's random part, so
        that operators listing locks can see who holds what.

        Raises :class:`QuorumUnavailable` when too few masters answer, and
        :class:`ConfigurationError` for bad arguments.
        """
        req, renewal = self._acquisition(resource, ttl, options)
        return self._held(req, renewal)

    def _held(self, req: quorum.AcquireRequest, renewal: Renewal | None) -> Lock | None:
        """The one acquisition every form goes through: the round(s), then the handle."""
        lease = self._driver.run(quorum.acquire(req, self.policy, self._ctx))
        if lease is None:
            return None
        lock = Lock(self, lease, renewal)
        if renewal is not None:
            self._watchdog.add(lock, self.clock() + renewal.every)
        return lock

    def semaphore(
        self, resource: str, ttl: Seconds, *, limit: int, **options: Unpack[AcquireOptions]
    ) -> Lock | None:
        """One of ``limit`` permits on ``resource`` for ``ttl`` seconds; the handle, or None
        while all ``limit`` are held. Options and errors are :meth:`acquire`'s.

        A permit is a lock on one of the resource's ``limit`` slots (``<key>:permit:<i>``),
        won in one round as the first free slot on a quorum of masters (README,
        "Concurrency limits in the core"), so its handle is a :class:`Lock`: released,
        extended, renewed, fenced (per slot) and lost as a lock is. ``blocking=True``
        waiters are woken by the release of any slot. Holders that pass different limits
        for one resource share its first slots: a permit is given only while one of the
        caller's first ``limit`` slots is free, and the total never exceeds the largest.
        """
        req, renewal = self._permits(resource, ttl, limit, options)
        return self._held(req, renewal)

    @contextlib.contextmanager
    def permit(
        self, resource: str, ttl: Seconds, *, limit: int, **options: Unpack[AcquireOptions]
    ) -> Iterator[Lock]:
        """``with dlm.permit(...) as permit:`` runs the block holding one of ``limit``
        permits; raises :class:`LockNotAcquired` instead of entering when all are held."""
        permit = self.semaphore(resource, ttl, limit=limit, **options)
        if permit is None:
            raise self._not_acquired(resource, limit)
        with permit:
            yield permit

    @contextlib.contextmanager
    def lock(
        self, resource: str, ttl: Seconds, **options: Unpack[AcquireOptions]
    ) -> Iterator[Lock]:
        """``with dlm.lock(...) as lock:`` runs the block only while holding the lock.

        Raises :class:`LockNotAcquired` instead of entering when others hold it, and
        releases on the way out however the block ends.
        """
        lock = self.acquire(resource, ttl, **options)
        if lock is None:
            raise self._not_acquired(resource)
        with lock:
            yield lock

    def release(self, resource: str, token: str) -> bool:
        """Release by ``(resource, token)``, e.g. from another process than the holder's.

        Only keys holding exactly this token are deleted; True when a quorum was.
        """
        key = self.settings.key(resource)
        token = self._token(token)
        released, votes = self._driver.run(quorum.release(key, token, self.policy))
        return self._released(resource, released, votes)

    def locked(self, resource: str) -> bool:
        """Whether a quorum of masters holds ``resource`` now (by anyone)."""
        key = self.settings.key(resource)
        held, _votes = self._driver.run(quorum.inspect(resource, key, self.policy))
        return bool(held)

    def holder(self, resource: str) -> str | None:
        """The ``owner`` text of whoever holds ``resource``, as a quorum of masters agrees;
        None when it is free, held without an owner, or no quorum agrees (a race, an
        outage). The token's secret part never leaves this call."""
        owner: str | None = self._driver.run(quorum.holder(self.settings.key(resource)))
        return owner

    def run(self, algorithm: quorum.Algorithm) -> Any:
        """Drive one of :mod:`quorum`'s operations to its end and return its result: for
        celery_redlock's own tools (``admin``), which need a round's votes."""
        return self._driver.run(algorithm)

    def close(self) -> None:
        """Close every connection this manager opened (in any thread)."""
        self._driver.close()

    def __enter__(self) -> Redlock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Redlock masters={list(self.masters)} quorum={self.quorum}>"

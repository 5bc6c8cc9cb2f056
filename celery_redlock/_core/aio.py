"""AsyncRedlock: the asyncio driver around the same algorithm as :class:`Redlock`.

Usage::

    dlm = AsyncRedlock(["redis://r1:6379/0", "redis://r2:6379/0", "redis://r3:6379/0"])
    async with dlm.lock("report:2024-06", ttl=30, blocking=True, timeout=10) as lock:
        ...

Each round starts one task per master and settles as soon as a quorum said yes or can no
longer say it; tasks still out finish in the background (bounded by the per-master
timeout) and hand their connection back. Semantics, defaults and errors are
:class:`~celery_redlock.Redlock`'s: only the waiting differs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.exceptions import AuthenticationError, InvalidResponse, RedisError

from celery_redlock._core import connect, quorum, replies, resp, rounds
from celery_redlock._core.connect import Endpoint
from celery_redlock._core.durations import Seconds
from celery_redlock._core.handle import HandleBase, Renewal
from celery_redlock._core.manager import AcquireOptions, ManagerBase
from celery_redlock._core.protocol import Call, identify, loads, server_facts
from celery_redlock._core.quorum import Listen, Round, Vote
from celery_redlock._core.resp import INCOMPLETE
from celery_redlock._core.roster import Roster
from celery_redlock.exceptions import LockLost

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncLock", "AsyncRedlock"]

#: Failures that mean "this master did not answer", as opposed to an error reply (the
#: reader raises InvalidResponse for a malformed reply: a protocol error).
_IO_ERRORS = (redis.ConnectionError, redis.TimeoutError, InvalidResponse, OSError)

#: Sent on every new connection, after its log-in and ahead of its first call (see
#: ``protocol.loads`` and ``protocol.identify``): our scripts, then what the server is.
_LOADS = loads()
_IDENTIFY = identify()
_PACKED_OPENING = b"".join(map(resp.pack, [*_LOADS, *_IDENTIFY]))

#: Bytes asked of the stream per read: every reply the driver expects fits many times.
_CHUNK = 65536


class _Conn:
    """One stream to one master, ours end to end: opened with :func:`connect.open_stream`,
    written with RESP we packed, read with our reader (hiredis's or ``resp.PyReader``, as
    in the sync driver), whose error replies are returned, not raised.

    A new stream's first write is its log-in, our scripts and INFO, then the first call:
    one round trip. ``opening`` counts the replies to the first two still to read ahead of
    the call's. ``proven``: it has answered a call before, so a failure on it may just mean
    that its master restarted since.
    """

    __slots__ = (
        "commands",
        "endpoint",
        "handshake",
        "name",
        "opening",
        "proven",
        "reader",
        "stream",
        "writer",
    )

    def __init__(self, endpoint: Endpoint, name: str) -> None:
        self.endpoint = endpoint
        self.name = name
        self.commands: list[str] = []  # the log-in's command names, to word a refusal
        self.reader = resp.new_reader()
        self.stream: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.handshake = 0  # replies to the log-in still to read
        self.opening = False  # the scripts' and INFO's replies are still to read
        self.proven = False

    async def open(self, timeout: float, first: bytes, *, opening: bool) -> None:
        """Connect (TLS included) within ``timeout`` and send ``first`` behind the log-in
        (``opening``: it starts with ``_PACKED_OPENING``); raises a redis ConnectionError
        or TimeoutError in the wording of both drivers."""
        try:
            self.stream, self.writer = await connect.open_stream(self.endpoint, timeout)
        except OSError as exc:  # TimeoutError included
            raise connect.unreachable(self.name, exc) from exc
        handshake = self.endpoint.handshake()
        self.commands = [connect.command_name(command) for command in handshake]
        self.reader = resp.new_reader()
        self.handshake = len(handshake)
        self.opening = opening
        self.proven = False
        self.send(b"".join(map(resp.pack, handshake)) + first)

    def usable(self) -> bool:
        """Open, and not closed by the master meanwhile (its restart, an idle timeout)."""
        writer, stream = self.writer, self.stream
        return not (writer is None or stream is None or writer.is_closing() or stream.at_eof())

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the master: a call is a small write, flushed by the loop."""
        writer = self.writer
        if writer is None or writer.is_closing():
            raise redis.ConnectionError("error while writing: the connection is closed")
        writer.write(data)

    async def reply(self) -> Any:
        """The next reply; an error reply is returned (a RedisError), a malformed one raises
        InvalidResponse. Safe to cancel: what was read stays in the reader."""
        reader = self.reader
        reply = reader.gets()
        while reply is INCOMPLETE:
            stream = self.stream
            if stream is None:
                raise redis.ConnectionError("not connected")
            try:
                data = await stream.read(_CHUNK)
            except OSError as exc:
                raise redis.ConnectionError(f"error while reading: {exc}") from exc
            if not data:
                raise redis.ConnectionError("error while reading: closed by the master")
            reader.feed(data)
            reply = reader.gets()
        return reply

    async def logged_in(self) -> None:
        """Read the log-in's replies; an error among them fails the connection (its text is
        the master's: a password is never in it)."""
        while self.handshake:
            reply = await self.reply()
            command = self.commands[len(self.commands) - self.handshake]
            self.handshake -= 1
            if isinstance(reply, RedisError):
                raise connect.refused(command, self.name, reply)

    def close(self) -> None:
        """Close at once (no await, so that a cancelled exchange can close on its way out):
        a reply still on its way must never be read as the answer to another call."""
        writer, self.writer, self.stream = self.writer, None, None
        if writer is not None:
            writer.close()

    async def aclose(self, timeout: float) -> None:
        """Close, and wait (up to ``timeout``) until the transport is gone."""
        writer = self.writer
        self.close()
        if writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout)


class _Driver:
    """Runs the shared algorithm's effects with asyncio streams.

    Each round sends the command to every master on a connection of its own (an idle one,
    or one opened for it: the opening is before the round's deadline starts, as in the sync
    driver), then reads the replies in one task per master until the round is settled
    (``rounds.patience``). A task still reading then goes on in the background until the
    round's deadline, and gives its connection back; one cut off (the deadline, or the
    operation cancelled) closes it, so that a late reply is never read as the answer to
    the next call.
    """

    def __init__(self, roster: Roster) -> None:
        self._m = roster
        self._idle: list[list[_Conn]] = [[] for _ in roster.names]
        self._background: set[asyncio.Task[Vote]] = set()
        self._identities = roster.identities

    async def run(self, algorithm: quorum.Algorithm) -> Any:
        """Drive one operation to its end; the sync driver's loop, with ``await``."""
        listener: _Listener | None = None
        result: Any = None
        try:
            while True:
                effect = algorithm.send(result)
                if isinstance(effect, Round):
                    result = await self.round(effect)
                elif isinstance(effect, Listen):
                    listener = listener or _Listener(self._m)
                    await listener.listen(effect.channel)
                    result = None
                else:
                    result = await (listener or _Listener.idle).wait(effect.seconds)
        except StopIteration as stop:
            return stop.value
        finally:
            if listener is not None:
                await listener.close()

    async def round(self, rnd: Round) -> list[Vote]:
        m = self._m
        targets = rnd.targets if rnd.targets is not None else range(len(m))
        votes: list[Vote | None] = [None] * len(targets)
        data = rounds.packed(rnd)
        conns, fresh = self._send(rnd, targets, votes, data)
        tasks: dict[asyncio.Task[Vote], tuple[int, _Conn]] = {}
        try:
            if fresh:
                # Concurrently, and before the deadline starts: the per-master timeout
                # bounds the wait for replies, not the set-up of new connections (TCP, TLS).
                opened = await asyncio.gather(*(self._open(i, data) for _pos, i in fresh))
                for (pos, i), conn in zip(fresh, opened, strict=True):
                    if isinstance(conn, _Conn):
                        conns[pos] = conn
                    else:
                        votes[pos] = m.failed(i, conn)
            deadline = m.clock() + m.timeout
            for pos, conn in conns.items():
                task = asyncio.ensure_future(self._exchange(targets[pos], conn, rnd.call))
                tasks[task] = (pos, conn)
            if rnd.wait and tasks:
                await self._collect(tasks, votes, deadline)
        except BaseException:
            # Cut off mid-round (cancelled): no reply may be left to read on a connection
            # that another call could take.
            for task in tasks:
                task.cancel()
            for conn in conns.values():
                conn.close()
            raise
        self._linger(rnd, targets, tasks, votes, deadline)
        return cast("list[Vote]", votes)  # every position has its vote now

    def _send(
        self, rnd: Round, targets: Sequence[int], votes: list[Vote | None], data: bytes
    ) -> tuple[dict[int, _Conn], list[tuple[int, int]]]:
        """Send ``data`` to every master of the round on an idle connection of its own;
        returns them (by position in ``votes``) and the masters that need a new one. A
        master ``rounds.excluded`` gets its vote now."""
        now = self._m.clock()
        conns: dict[int, _Conn] = {}
        fresh: list[tuple[int, int]] = []  # (position, master)
        for pos, i in enumerate(targets):
            idle = self._idle[i]
            while idle and not idle[-1].usable():
                idle.pop().close()
            skip = rounds.excluded(self._m, i, now, rnd, connected=bool(idle))
            if skip is not None:
                votes[pos] = skip
            elif idle:
                conns[pos] = conn = idle.pop()
                conn.send(data)
            else:
                fresh.append((pos, i))
        return conns, fresh

    async def _collect(
        self,
        tasks: dict[asyncio.Task[Vote], tuple[int, _Conn]],
        votes: list[Vote | None],
        deadline: float,
    ) -> None:
        """Take votes as they come until the round is settled or the deadline passes."""
        clock = self._m.clock
        pending: set[asyncio.Task[Vote]] = set(tasks)
        count = quorum.Count(votes, len(self._m))
        while pending:
            wait = rounds.patience(count, len(pending), deadline, clock())
            if wait > 0:
                done, pending = await asyncio.wait(
                    pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
            else:  # the last look: the exchanges already done, without a turn of the loop
                done = {task for task in pending if task.done()}
                if not done:
                    break
                pending -= done
            for task in done:
                vote = task.result()
                votes[tasks[task][0]] = vote
                count.add(vote)

    def _linger(
        self,
        rnd: Round,
        targets: Sequence[int],
        tasks: dict[asyncio.Task[Vote], tuple[int, _Conn]],
        votes: list[Vote | None],
        deadline: float,
    ) -> None:
        """The votes of the masters not heard (``rounds.unanswered``); their exchanges go
        on in the background until the deadline, and are then cancelled (closing their
        connections).

        A release (or undo) gets one more timeout, the sync driver's bound: it keeps such
        a call's connection until the reply is owed for longer than the timeout, so that a
        late NOSCRIPT still sends the call again with its script's source (our key would
        otherwise stay on that master until it expires).
        """
        m = self._m
        now = m.clock()
        if rnd.call.safe_anytime:
            deadline += m.timeout
        expired = now >= deadline
        loop = asyncio.get_running_loop()
        for task, (pos, conn) in tasks.items():
            if votes[pos] is not None:
                continue
            if task.done():  # in since the last look
                votes[pos] = task.result()
                continue
            votes[pos] = rounds.unanswered(m, targets[pos], rnd, expired)
            if expired:
                task.cancel()  # a task not started yet would not close it: close it here
                conn.close()
            else:
                loop.call_later(deadline - now, self._expire, task, conn, targets[pos])
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _expire(self, task: asyncio.Task[Vote], conn: _Conn, i: int) -> None:
        """A reply the round settled without is still missing at its deadline: the master
        fails (as the sync driver finds it overdue), and its connection is closed."""
        if not task.done():
            task.cancel()
            conn.close()
            self._m.failed(i, replies.timed_out(self._m.timeout))

    async def _open(self, i: int, first: bytes) -> _Conn | BaseException:
        """A new connection to master ``i`` with ``first`` sent on it, or why not."""
        conn = _Conn(self._m.endpoints[i], self._m.names[i])
        try:
            await conn.open(self._m.timeout, _PACKED_OPENING + first, opening=True)
        except _IO_ERRORS as exc:
            conn.close()
            return exc
        except BaseException:
            conn.close()
            raise
        return conn

    async def _exchange(self, i: int, conn: _Conn, call: Call) -> Vote:
        """Master ``i``'s vote on the call sent on ``conn``; never raises (cancellation
        aside, which closes ``conn``): whatever the master answers, malformed or not, is
        its vote, in the sync driver's words (the same reader, the same ``rounds``)."""
        m = self._m
        try:
            try:
                vote = await self._answer(i, conn, call)
            except _IO_ERRORS:
                if not conn.proven:
                    raise
                # The master restarted since our last use: ask once more, anew.
                conn.close()
                await conn.open(m.timeout, _PACKED_OPENING + call.packed(), opening=True)
                vote = await self._answer(i, conn, call)
        except _IO_ERRORS as exc:
            conn.close()
            return m.failed(i, exc)
        except Exception as exc:  # a bug of ours must not escape a background task
            conn.close()
            return m.failed(i, exc)
        except BaseException:
            conn.close()
            raise
        self._idle[i].append(conn)
        return vote

    async def _answer(self, i: int, conn: _Conn, call: Call) -> Vote:
        """Read the opening's replies if still owed, then the call's, as a vote."""
        if conn.handshake:
            await conn.logged_in()
        if conn.opening:
            await self._read_opening(i, conn)
        reply = await conn.reply()
        vote = rounds.judge(self._m, i, call, reply)
        if vote is None:  # NOSCRIPT: the master lost its scripts
            conn.send(resp.pack(call.fallback()))
            reply = await conn.reply()
            vote = rounds.judge(self._m, i, call, reply)
        if not isinstance(reply, RedisError):
            conn.proven = True
        return vote or self._m.error(i, f"{type(reply).__name__}: {reply}")

    async def _read_opening(self, i: int, conn: _Conn) -> None:
        """The replies to a new connection's loads (an error, e.g. an ACL without SCRIPT,
        changes nothing: EVAL still works) and INFO (recorded for master ``i``)."""
        for load in _LOADS:  # NOAUTH: the master wants a password we were not given
            if isinstance(reply := await conn.reply(), AuthenticationError):
                raise connect.refused(connect.command_name(load), conn.name, reply)
        facts = [await conn.reply() for _ in _IDENTIFY]
        conn.opening = False
        self._identities.record(i, server_facts(facts))

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        for idle in self._idle:
            while idle:
                await idle.pop().aclose(self._m.timeout)


class _Listener:
    """Subscriptions to one waiter's channel on every master, for one blocked acquisition;
    a master that refuses it (an ACL) is warned of and left out, as the sync driver does.
    Its connections are :class:`_Conn` too, the log-in ahead of SUBSCRIBE in one write."""

    idle: _Listener

    def __init__(self, roster: Roster | None) -> None:
        self._m = roster
        self._conns: list[_Conn] = []
        self._news = asyncio.Event() if roster is not None else None
        self._heard = 0  # wake-ups since the last wait returned
        self._late = False  # listen() stopped waiting for confirmations
        self._readers: list[asyncio.Task[None]] = []

    async def listen(self, channel: str) -> None:
        m = self._m
        assert m is not None
        now = m.clock()
        ready: list[asyncio.Future[None]] = []
        subscribe = resp.pack(("SUBSCRIBE", channel))
        for i, endpoint in enumerate(m.endpoints):
            if m.health[i].skip_reason(now) is not None:
                continue
            conn = _Conn(endpoint, m.names[i])
            self._conns.append(conn)
            confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ready.append(confirmed)
            reading = self._read(i, conn, subscribe, confirmed)
            self._readers.append(asyncio.ensure_future(reading))
        # Subscribed means confirmed: only then can no release slip past unheard.
        if ready:
            await asyncio.wait(ready, timeout=m.timeout, return_when=asyncio.ALL_COMPLETED)
        self._late = True  # a confirmation from now on comes after the round that follows

    async def _read(
        self, i: int, conn: _Conn, subscribe: bytes, confirmed: asyncio.Future[None]
    ) -> None:
        assert self._news is not None
        assert self._m is not None
        try:
            await conn.open(self._m.timeout, subscribe, opening=False)
            await conn.logged_in()
            while True:
                reply = await conn.reply()
                if isinstance(reply, RedisError):
                    self._m.subscription_refused(i, reply)
                    break
                if reply and reply[0] == b"subscribe" and not confirmed.done():
                    confirmed.set_result(None)
                if rounds.wake_ups(reply, self._late):
                    self._heard += 1
                    self._news.set()
        except _IO_ERRORS:
            pass
        finally:
            conn.close()
            if not confirmed.done():
                confirmed.set_result(None)

    async def wait(self, seconds: float) -> int:
        """Sleep up to ``seconds``, or until woken; returns how many wake-ups came."""
        if self._news is None or not self._readers:
            await asyncio.sleep(seconds)
            return 0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._news.wait(), seconds)
        self._news.clear()
        heard, self._heard = self._heard, 0
        return heard

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(BaseException):
                await task
        assert self._m is not None
        for conn in self._conns:
            await conn.aclose(self._m.timeout)


_Listener.idle = _Listener(None)


class AsyncLock(HandleBase["AsyncRedlock"]):
    """A held lock, for asyncio: :class:`~celery_redlock.Lock`'s twin with awaitable verbs."""

    def __init__(self, manager: AsyncRedlock, lease: quorum.Lease, renewal: Renewal | None) -> None:
        super().__init__(manager, lease, renewal)
        self._mutex = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None

    async def release(self) -> bool:
        """Free the lock; True when a quorum deleted our key. Renewal stops first."""
        async with self._mutex:
            if self._released:
                return False
            self._released = True
            if self._renewer is not None:
                self._renewer.cancel()
        released, votes = await self._manager._driver.run(
            quorum.release(self.key, self.token, self._manager.policy, self._lease.line)
        )
        return self._manager._released(self.resource, released, votes)

    async def extend(self, ttl: Seconds | None = None) -> float:
        """Re-arm the lock to ``ttl`` seconds (default: its TTL); returns the new validity.

        Errors and the validity after them as in :meth:`Lock.extend`.
        """
        async with self._mutex:
            if self._released:
                raise LockLost(f"lock on {self.resource!r} was released", resource=self.resource)
            new_ttl = self._ttl if ttl is None else self._manager.settings.ttl(ttl)
            return self._extended(await self._manager._driver.run(self._extension(new_ttl)))

    async def _renew_forever(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            async with self._mutex:
                ttl = self._next_ttl()
                if ttl is None:
                    return
                next_delay = self._renewed(await self._manager._driver.run(self._extension(ttl)))
            if next_delay is None:
                return
            delay = next_delay

    async def __aenter__(self) -> AsyncLock:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class AsyncRedlock(ManagerBase):
    """:class:`~celery_redlock.Redlock` for asyncio: same masters, options and semantics.

    Use one instance per event loop: its connections belong to the loop that opened them.
    """

    def __init__(self, masters: Sequence[Any], **options: Any) -> None:
        super().__init__(masters, **options)
        self._driver = _Driver(self.roster)

    async def acquire(
        self, resource: str, ttl: Seconds, **options: Unpack[AcquireOptions]
    ) -> AsyncLock | None:
        """Lock ``resource`` for ``ttl`` seconds; see :meth:`Redlock.acquire`."""
        req, renewal = self._acquisition(resource, ttl, options)
        return await self._held(req, renewal)

    async def semaphore(
        self, resource: str, ttl: Seconds, *, limit: int, **options: Unpack[AcquireOptions]
    ) -> AsyncLock | None:
        """One of ``limit`` permits on ``resource``; see :meth:`Redlock.semaphore`."""
        req, renewal = self._permits(resource, ttl, limit, options)
        return await self._held(req, renewal)

    @contextlib.asynccontextmanager
    async def permit(
        self, resource: str, ttl: Seconds, *, limit: int, **options: Unpack[AcquireOptions]
    ) -> AsyncIterator[AsyncLock]:
        """``async with dlm.permit(...)``; raises :class:`LockNotAcquired` if all are held."""
        permit = await self.semaphore(resource, ttl, limit=limit, **options)
        if permit is None:
            raise self._not_acquired(resource, limit)
        async with permit:
            yield permit

    async def _held(self, req: quorum.AcquireRequest, renewal: Renewal | None) -> AsyncLock | None:
        """The one acquisition every form goes through: the round(s), then the handle."""
        lease = await self._driver.run(quorum.acquire(req, self.policy, self._ctx))
        if lease is None:
            return None
        lock = AsyncLock(self, lease, renewal)
        if renewal is not None:
            lock._renewer = asyncio.ensure_future(lock._renew_forever(renewal.every))
        return lock

    @contextlib.asynccontextmanager
    async def lock(
        self, resource: str, ttl: Seconds, **options: Unpack[AcquireOptions]
    ) -> AsyncIterator[AsyncLock]:
        """``async with dlm.lock(...) as lock:``; raises :class:`LockNotAcquired` if held."""
        lock = await self.acquire(resource, ttl, **options)
        if lock is None:
            raise self._not_acquired(resource)
        async with lock:
            yield lock

    async def release(self, resource: str, token: str) -> bool:
        """Release by ``(resource, token)``; only keys holding exactly this token go."""
        key = self.settings.key(resource)
        token = self._token(token)
        released, votes = await self._driver.run(quorum.release(key, token, self.policy))
        return self._released(resource, released, votes)

    async def locked(self, resource: str) -> bool:
        """Whether a quorum of masters holds ``resource`` now (by anyone)."""
        key = self.settings.key(resource)
        held, _votes = await self._driver.run(quorum.inspect(resource, key, self.policy))
        return bool(held)

    async def holder(self, resource: str) -> str | None:
        """The ``owner`` text of whoever holds ``resource``; see :meth:`Redlock.holder`."""
        owner: str | None = await self._driver.run(quorum.holder(self.settings.key(resource)))
        return owner

    async def close(self) -> None:
        """Close every connection; waits for replies still in flight (bounded)."""
        await self._driver.close()

    async def __aenter__(self) -> AsyncRedlock:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncRedlock masters={list(self.masters)} quorum={self.quorum}>"

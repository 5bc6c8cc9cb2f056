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
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import redis
import redis.asyncio.connection as aconn
from redis.exceptions import InvalidResponse, ResponseError

from celery_redlock._core import quorum, replies
from celery_redlock._core.durations import Seconds
from celery_redlock._core.handle import HandleBase, Renewal
from celery_redlock._core.manager import ManagerBase
from celery_redlock._core.masters import MasterSpec
from celery_redlock._core.protocol import Call, identify, is_noscript, loads, server_facts
from celery_redlock._core.quorum import Listen, Round, Vote
from celery_redlock._core.roster import Roster, describe
from celery_redlock.exceptions import (
    LockLost,
    LockNotAcquired,
)

__all__ = ["AsyncLock", "AsyncRedlock"]

_IO_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    InvalidResponse,
    OSError,
    asyncio.TimeoutError,
)

#: What redis-py's pure-Python reader raises on some malformed replies, besides
#: InvalidResponse: ValueError for a bad number, RecursionError for deep nesting.
_MALFORMED = (ValueError, RecursionError)


def _protocol_error(exc: BaseException) -> InvalidResponse:
    """A malformed reply, named as the sync driver's readers name it."""
    if isinstance(exc, RecursionError):
        return InvalidResponse("protocol error: arrays nested too deep")
    return InvalidResponse(f"protocol error: {exc}")


#: Sent on every new connection (see ``protocol.loads`` and ``protocol.identify``).
_LOADS = loads()
_IDENTIFY = identify()

#: Marks a connection whose socket has had our scripts sent (see ``_call``).
_LOADED = "_celery_redlock_loaded"

#: Marks a connection that has answered before (see ``_call_once_more_if_stale``).
_PROVEN = "_celery_redlock_proven"

_ASYNC_CLASSES = {
    "Connection": aconn.Connection,
    "SSLConnection": aconn.SSLConnection,
    "UnixDomainSocketConnection": aconn.UnixDomainSocketConnection,
}


def _async_factory(spec: MasterSpec, timeout: float, *, reads: bool = True) -> Callable[[], Any]:
    """A maker of asyncio connections with the same settings as the spec's sync class;
    ``reads=False`` lifts the read timeout, for subscriptions that wait for news."""
    klass = _ASYNC_CLASSES.get(spec.connection_class.__name__, aconn.Connection)
    accepted: set[str] = set()
    for base in klass.__mro__:
        init = base.__dict__.get("__init__")
        if init is not None:
            accepted |= set(inspect.signature(init).parameters)
    kwargs = {k: v for k, v in spec.connect_kwargs(timeout).items() if k in accepted}
    kwargs.pop("retry", None)  # the sync Retry object; the async default retries nothing here
    if not reads:
        kwargs["socket_timeout"] = None
    return lambda: klass(**kwargs)


class _Driver:
    """Runs the shared algorithm's effects with asyncio."""

    def __init__(self, roster: Roster) -> None:
        self._m = roster
        timeout = roster.timeout
        self._factories = [_async_factory(spec, timeout) for spec in roster.specs]
        self._listeners = [_async_factory(s, timeout, reads=False) for s in roster.specs]
        self._idle: list[list[Any]] = [[] for _ in roster.specs]
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
                    listener = listener or _Listener(self)
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
        now = m.clock()
        votes: list[Vote | None] = [None] * len(targets)
        send: list[tuple[int, int]] = []  # (position in votes, master)
        for pos, i in enumerate(targets):
            skip = m.skipped(i, now)
            # A release or an undo reaches a master in its cool-down too (safe_anytime),
            # over a connection already open, never a new one (the sync driver sends every
            # clean-up on the connection its call went out on).
            if skip is not None and not (rnd.call.safe_anytime and self._idle[i]):
                votes[pos] = skip
            else:
                send.append((pos, i))
        # As in the sync driver, the per-master timeout bounds the wait for replies, not
        # the set-up of new connections (handshake, TLS, AUTH), which is bounded by its own.
        fresh = [(pos, i) for pos, i in send if not self._idle[i]]
        if fresh:
            opened = await asyncio.gather(*(self._open(i) for _pos, i in fresh))
            for (pos, _i), failure in zip(fresh, opened, strict=True):
                votes[pos] = failure
        deadline = m.clock() + m.timeout
        tasks: dict[asyncio.Task[Vote], int] = {
            asyncio.ensure_future(self._exchange(i, rnd.call, deadline)): pos
            for pos, i in send
            if votes[pos] is None
        }
        pending = set(tasks) if rnd.wait else set()
        count = quorum.Count(votes, len(m))
        while not count.decided(len(pending)):
            remaining = deadline - m.clock()
            if remaining <= 0:
                break
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                vote = task.result()
                votes[tasks[task]] = vote
                count.add(vote)
        error = replies.SETTLED_WITHOUT if rnd.wait else replies.NOT_AWAITED
        for task, pos in tasks.items():
            if votes[pos] is None:
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                votes[pos] = m.error(targets[pos], error)
        return [v for v in votes if v is not None]

    async def _open(self, i: int) -> Vote | None:
        """A new connection to master ``i``, left idle for the round's exchange; an ERROR
        vote if it cannot be made (within the connect and read timeouts)."""
        conn = self._factories[i]()
        try:
            await conn.connect()
        except _IO_ERRORS as exc:
            return await self._failed(i, conn, exc, "no connection in time")
        except BaseException:
            await conn.disconnect()
            raise
        self._idle[i].append(conn)
        return None

    async def _failed(self, i: int, conn: Any, exc: BaseException, silent: str) -> Vote:
        """Master ``i`` did not answer on ``conn``: closed, its failure noted, an ERROR
        vote (``silent`` says what was missing when the error has no text: a timeout)."""
        await conn.disconnect()
        return self._m.failed(i, describe(exc) if str(exc) else silent)

    async def _exchange(self, i: int, call: Call, deadline: float) -> Vote:
        """One call to master ``i`` on a connection of its own; never raises (cancellation
        aside): whatever the master answers, malformed or not, is its vote, in the sync
        driver's words where the readers allow."""
        conn = self._idle[i].pop() if self._idle[i] else self._factories[i]()
        try:
            reply = await self._call_once_more_if_stale(i, conn, call, deadline)
        except ResponseError as exc:
            self._idle[i].append(conn)
            return self._m.error(i, describe(exc))
        except _IO_ERRORS as exc:
            return await self._failed(i, conn, exc, "no reply in time")
        except _MALFORMED as exc:
            return await self._failed(i, conn, _protocol_error(exc), "malformed reply")
        except BaseException:
            await conn.disconnect()
            raise
        self._idle[i].append(conn)
        return self._m.answered(i, call, reply)

    async def _call_once_more_if_stale(self, i: int, conn: Any, call: Call, deadline: float) -> Any:
        """A connection that answered before may have outlived its master's restart: one
        failure on it earns one retry on a new connection (every call is repeatable)."""
        proven = getattr(conn, _PROVEN, False)
        try:
            reply = await asyncio.wait_for(self._call(i, conn, call), deadline - self._m.clock())
        except (redis.ConnectionError, OSError):
            if not proven:
                raise
            await conn.disconnect()
            setattr(conn, _PROVEN, False)
            reply = await asyncio.wait_for(self._call(i, conn, call), deadline - self._m.clock())
        setattr(conn, _PROVEN, True)
        return reply

    async def _call(self, i: int, conn: Any, call: Call) -> Any:
        # A connection's first call loads our scripts and asks what the server is ahead of
        # it, in the same write: the call goes out even if the master answers nothing in
        # time, and its vote is made knowing the server (see ``health.Identities``).
        fresh = not conn.is_connected or not getattr(conn, _LOADED, False)
        opening = [*_LOADS, *_IDENTIFY] if fresh else []
        await conn.send_packed_command(
            conn.pack_commands([*opening, call.command()]), check_health=False
        )
        setattr(conn, _LOADED, True)  # for this socket: a reconnect finds is_connected False
        if fresh:
            await self._read_opening(i, conn)
        try:
            return await conn.read_response()
        except ResponseError as exc:
            if not is_noscript(exc):
                raise
        await conn.send_packed_command(conn.pack_command(*call.fallback()), check_health=False)
        return await conn.read_response()

    async def _read_opening(self, i: int, conn: Any) -> None:
        """The replies to a new connection's loads (an error, e.g. an ACL without SCRIPT,
        changes nothing: EVAL still works) and INFO (recorded for master ``i``)."""
        for _ in _LOADS:
            with contextlib.suppress(ResponseError):
                await conn.read_response()
        replies = [await _reply_or_error(conn) for _ in _IDENTIFY]
        self._identities.record(i, server_facts(replies))

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task
        for idle in self._idle:
            while idle:
                await idle.pop().disconnect()


async def _reply_or_error(conn: Any) -> Any:
    """The next reply on ``conn``; an error reply is returned, not raised."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc


class _Listener:
    """Subscriptions to one waiter's channel on every master, for one blocked acquisition;
    a master that refuses it (an ACL) is warned of and left out, as the sync driver does."""

    idle: _Listener

    def __init__(self, driver: _Driver | None) -> None:
        self._driver = driver
        self._conns: list[Any] = []
        self._news = asyncio.Event() if driver is not None else None
        self._heard = 0  # wake-ups since the last wait returned
        self._late = False  # listen() stopped waiting for confirmations
        self._readers: list[asyncio.Task[None]] = []

    async def listen(self, channel: str) -> None:
        d = self._driver
        assert d is not None
        m = d._m
        now = m.clock()
        ready: list[asyncio.Future[None]] = []
        for i, factory in enumerate(d._listeners):
            if m.health[i].skip_reason(now) is not None:
                continue
            conn = factory()
            self._conns.append(conn)
            confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ready.append(confirmed)
            self._readers.append(asyncio.ensure_future(self._read(i, conn, channel, confirmed)))
        # Subscribed means confirmed: only then can no release slip past unheard.
        if ready:
            await asyncio.wait(ready, timeout=m.timeout, return_when=asyncio.ALL_COMPLETED)
        self._late = True  # a confirmation from now on comes after the round that follows

    async def _read(self, i: int, conn: Any, channel: str, confirmed: asyncio.Future[None]) -> None:
        assert self._news is not None
        assert self._driver is not None
        try:
            await conn.send_command("SUBSCRIBE", channel)
            while True:
                reply = await conn.read_response()
                if reply and reply[0] == b"subscribe" and not confirmed.done():
                    confirmed.set_result(None)
                    if self._late:  # may have missed a release sent before it: ask again
                        self._heard += 1
                        self._news.set()
                elif reply and reply[0] == b"message":
                    self._heard += 1  # every copy counts: see the sync driver's _Listener
                    self._news.set()
        except (*_IO_ERRORS, ResponseError) as exc:
            if isinstance(exc, ResponseError):
                self._driver._m.subscription_refused(i, exc)
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
        for conn in self._conns:
            await conn.disconnect()


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
            quorum.release(self.key, self.token, self._manager.policy)
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


class AsyncRedlock(ManagerBase):
    """:class:`~celery_redlock.Redlock` for asyncio: same masters, options and semantics.

    Use one instance per event loop: its connections belong to the loop that opened them.
    """

    def __init__(self, masters: Sequence[Any], **options: Any) -> None:
        super().__init__(masters, **options)
        self._driver = _Driver(self.roster)

    async def acquire(
        self,
        resource: str,
        ttl: Seconds,
        *,
        blocking: bool = False,
        timeout: Seconds | None = None,
        auto_renew: bool = False,
        renew_every: Seconds | None = None,
        max_hold: Seconds | None = None,
        owner: str | None = None,
        on_lost: Callable[[AsyncLock, LockLost], None] | None = None,
    ) -> AsyncLock | None:
        """Lock ``resource`` for ``ttl`` seconds; see :meth:`Redlock.acquire`."""
        req = self._request(resource, ttl, blocking, timeout, owner)
        renewal = self._renewal(req.ttl, auto_renew, renew_every, max_hold, on_lost)
        lease = await self._driver.run(quorum.acquire(req, self.policy, self._ctx))
        if lease is None:
            return None
        lock = AsyncLock(self, lease, renewal)
        if renewal is not None:
            lock._renewer = asyncio.ensure_future(lock._renew_forever(renewal.every))
        return lock

    @contextlib.asynccontextmanager
    async def lock(
        self,
        resource: str,
        ttl: Seconds,
        *,
        blocking: bool = False,
        timeout: Seconds | None = None,
        **renewal: Any,
    ) -> AsyncIterator[AsyncLock]:
        """``async with dlm.lock(...) as lock:``; raises :class:`LockNotAcquired` if held."""
        lock = await self.acquire(resource, ttl, blocking=blocking, timeout=timeout, **renewal)
        if lock is None:
            raise LockNotAcquired(f"{resource!r} is locked by another holder", resource=resource)
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

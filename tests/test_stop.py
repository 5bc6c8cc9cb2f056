"""The Stopper behind ``lock_on_lost="raise"``: a Stop reaches the body only while it runs,
comes out of the run as its LockLost, and never lands after the body (in the release, or
in Celery's tracer storing the result)."""

from __future__ import annotations

import threading

import pytest

from celery_redlock import LockLost
from celery_redlock._celery.stop import Stop, Stopper, interrupter

LOST = LockLost("lock on 'r' is lost", resource="r")


def busy(seconds_of_bytecode: int = 200_000) -> int:
    """Python bytecode for a while: where a pending Stop would land."""
    total = 0
    for i in range(seconds_of_bytecode):
        total += i
    return total


def test_a_stop_sent_while_the_body_runs_fails_the_run_with_its_loss() -> None:
    stopper = Stopper(interrupter())
    lost: list[LockLost] = []
    started = threading.Event()

    def stop_it() -> None:
        started.wait()
        lost.append(LOST)
        assert stopper.stop(LOST)

    def body() -> None:
        started.set()
        while True:  # never ends by itself
            busy(1000)

    thread = threading.Thread(target=stop_it)
    thread.start()
    with pytest.raises(LockLost) as raised:
        stopper.call(body, lambda: lost[0] if lost else None)
    thread.join()
    assert raised.value is LOST
    assert not stopper.stop(LOST)  # once only


def stopped_while_waiting_in_c() -> object:
    """One run whose stop is sent while the body waits in C code (a lock's acquire: no
    bytecode runs), the body returning as soon as it is let go; what the run gave."""
    gate = threading.Lock()
    gate.acquire()
    stopper = Stopper(interrupter())
    lost: list[LockLost] = []

    def stop_it() -> None:
        lost.append(LOST)
        stopper.stop(LOST)
        gate.release()

    timer = threading.Timer(0.001, stop_it)
    timer.start()
    try:
        outcome: object = stopper.call(gate.acquire, lambda: lost[0] if lost else None)
    except LockLost as exc:
        outcome = exc
    busy()  # a Stop still pending would land here, and fail the test
    timer.join()
    return outcome


def test_a_stop_never_lands_after_the_run() -> None:
    """The Stop lands in the body or in call's own exit, which turn it into the run's
    LockLost, or it is taken back; never later."""
    outcomes = {stopped_while_waiting_in_c() for _ in range(200)}
    assert outcomes <= {True, LOST}


def test_a_lock_lost_before_the_body_began_fails_the_run_without_running_it() -> None:
    ran = []
    with pytest.raises(LockLost):
        Stopper(interrupter()).call(lambda: ran.append(1), lambda: LOST)
    assert ran == []


def test_a_stop_sent_to_another_run_passes_through() -> None:
    """A nested eager run meets the outer run's Stop: not its own, so it lets it go."""
    inner = Stopper(interrupter())

    def body() -> None:
        raise Stop

    with pytest.raises(Stop):
        inner.call(body, lambda: None)

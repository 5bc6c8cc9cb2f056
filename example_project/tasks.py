"""The example project's tasks: each one shows a way to hold a Redlock for a run.

- :func:`sync_customer`: locked per argument. ``sync_customer(7)`` twice at once would
  book customer 7's invoices twice; ``sync_customer(7)`` and ``sync_customer(8)`` run in
  parallel. A duplicate is skipped (its result says so), the default policy.
- :func:`nightly_report`: a beat job, locked on the task alone. Two beats run for
  availability; only the one holding the leader lease sends, and the task lock keeps a
  slow report from piling up behind itself.
- :func:`import_catalog`: a long job on a short lease. The lease (3 s) is renewed every
  second while the body runs, so the import keeps its lock for as long as it takes, and a
  worker that dies mid-import frees the supplier within 3 s rather than 30.
- :func:`settle_balance`: a write fenced where the data lives. The run's fence
  (``self.lock_fence``) goes with its write to the ledger's SQL row, which refuses it if a
  later run of the same customer has written: a run paused past its lease cannot put an
  older balance back (:mod:`example_project.ledger`).

The work itself is simulated (sleeps); the run log records every body's start and end.
"""

from __future__ import annotations

import time
from typing import Any

from celery_redlock import SingletonTask
from example_project.celery import app, ledger, runlog

__all__ = ["import_catalog", "nightly_report", "settle_balance", "sync_customer"]

#: How long the import's lock lasts without renewal (renewed every third of it).
IMPORT_LEASE = 3.0


def _sync_seconds(customer_id: int) -> float:
    """Some customers have more invoices than others: 1.0 to 1.8 s."""
    return 1.0 + (customer_id % 5) * 0.2


@app.task(bind=True, base=SingletonTask)  # type: ignore[untyped-decorator]
def sync_customer(self: Any, customer_id: int) -> dict[str, Any]:
    """Pull one customer's invoices from billing into the ledger, once at a time."""
    with runlog.run("sync_customer", str(customer_id), self.request.id):
        time.sleep(_sync_seconds(customer_id))
    return {"customer_id": customer_id, "invoices": customer_id % 7 + 1}


@app.task(bind=True, base=SingletonTask, lock_key=[])  # type: ignore[untyped-decorator]
def nightly_report(self: Any) -> dict[str, Any]:
    """Yesterday's totals: one report at a time, whoever sent it."""
    with runlog.run("nightly_report", "", self.request.id):
        time.sleep(0.3)
    return {"report": time.strftime("%Y-%m-%d")}


@app.task(  # type: ignore[untyped-decorator]
    bind=True, base=SingletonTask, lock_key=["source"], lock_lease=IMPORT_LEASE
)
def import_catalog(self: Any, source: str, seconds: float = 8.0) -> dict[str, Any]:
    """Import a supplier's catalog in one-second chunks, checking the lock between chunks.

    ``self.lock_check()`` raises LockLost the moment renewal fails (or the lock's
    validity runs out unrenewed): from then on another import of the same supplier may
    start, so this one stops rather than write on.
    Each chunk notes the lock's validity and how many masters voted for its last
    renewal, which the demo prints.
    """
    with runlog.run("import_catalog", source, self.request.id):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.lock_check()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            _note_progress(self)
    return {"source": source, "seconds": seconds}


@app.task(bind=True, base=SingletonTask, lock_key=["customer_id"])  # type: ignore[untyped-decorator]
def settle_balance(self: Any, customer_id: int, balance: int) -> dict[str, Any]:
    """Write a customer's settled balance to the ledger, fenced by this run's lock.

    The lock lets one run per customer in at a time; the fence makes the ledger refuse a
    run that lost its lock without noticing (paused past its lease): its write raises
    ``FenceRejected`` and the run fails, and the newer balance stays. The check runs in
    the database, so it holds however late the write arrives.
    """
    with runlog.run("settle_balance", str(customer_id), self.request.id):
        ledger.record(customer_id, balance, self.request.id, self.lock_fence)
    return {"customer_id": customer_id, "balance": balance, "fence": self.lock_fence}


def _note_progress(task: Any) -> None:
    lock = task.current_lock
    if lock is None:
        return
    yes = sum(1 for vote in lock.votes if vote.outcome.value == "yes")
    runlog.note(
        f"import:{task.request.id}",
        {"t": time.time(), "validity": lock.validity, "yes": yes, "votes": len(lock.votes)},
    )

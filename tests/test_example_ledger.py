"""example_project's ledger: the fenced write its ``settle_balance`` task makes, on a
SQLite file of the test's own (no Celery: the task body's one database call)."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_redlock import FenceRejected
from example_project.ledger import Ledger
from example_project.settings import Settings


def test_a_late_write_from_an_older_run_is_refused_and_the_newer_balance_stays(
    tmp_path: Path,
) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert ledger.balance(7) is None
    ledger.record(7, 100, "run-a", fence=1_800_000_000_000_001)
    ledger.record(7, 120, "run-b", fence=1_800_000_000_000_005)  # the next holder
    with pytest.raises(FenceRejected) as caught:
        ledger.record(7, 90, "run-a", fence=1_800_000_000_000_001)  # run-a wakes up late
    assert caught.value.standing == 1_800_000_000_000_005
    assert ledger.balance(7) == (120, "run-b", 1_800_000_000_000_005)
    ledger.record(8, 5, "run-c", fence=1_800_000_000_000_002)  # another customer's row
    assert ledger.balance(8) == (5, "run-c", 1_800_000_000_000_002)
    ledger.engine.dispose()


def test_the_ledger_defaults_to_a_sqlite_file_per_namespace() -> None:
    assert Settings.from_env({}).ledger_url.endswith("/example-ledger.db")
    assert Settings.from_env({"EXAMPLE_NAMESPACE": "n2"}).ledger_url.endswith("/n2-ledger.db")
    assert Settings.from_env({"EXAMPLE_LEDGER_URL": "sqlite://"}).ledger_url == "sqlite://"

"""The example project's configuration, read from environment variables.

Every value has a default that points at the services of the repository's
``docker-compose.yml`` (``broker``, ``redlock-1`` … ``redlock-5``), so the containers need
no configuration; anywhere else, set the variables:

======================== ========================================== =======================
variable                 default                                    meaning
======================== ========================================== =======================
EXAMPLE_BROKER_URL       ``redis://broker:6379/0``                  Celery broker
EXAMPLE_RESULT_BACKEND   the broker URL                             Celery result backend
EXAMPLE_REDLOCK_MASTERS  ``redis://redlock-N:6379/0``, N = 1..5     the lock's masters,
                                                                    comma separated
EXAMPLE_REPORT_EVERY     unset: the report runs nightly at 02:00    seconds between two
                                                                    nightly reports
EXAMPLE_NAMESPACE        ``example``                                queue name, lock key
                                                                    prefix and run log keys
EXAMPLE_RUNLOG_URL       the broker URL                             Redis for the run log
EXAMPLE_LEDGER_URL       ``sqlite:///<tmp>/<namespace>-ledger.db``  the ledger's database
                                                                    (SQLAlchemy URL)
======================== ========================================== =======================

The namespace keeps two deployments (or a demo run) on shared servers apart: each has its
own queue, its own lock keys and its own run log.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from celery_redlock.settings import split_urls as redlock_split_urls

__all__ = ["DEFAULT_BROKER_URL", "DEFAULT_MASTERS", "Settings"]

DEFAULT_BROKER_URL = "redis://broker:6379/0"
#: Five independent masters: any two may be down and locks still work.
DEFAULT_MASTERS = tuple(f"redis://redlock-{n}:6379/0" for n in range(1, 6))
DEFAULT_NAMESPACE = "example"


def default_ledger_url(namespace: str) -> str:
    """A SQLite file of the namespace's own in the temporary directory."""
    return f"sqlite:///{os.path.join(tempfile.gettempdir(), f'{namespace}-ledger.db')}"


@dataclass(frozen=True)
class Settings:
    """The values the Celery app is built from (see the module docstring)."""

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = DEFAULT_BROKER_URL
    masters: tuple[str, ...] = DEFAULT_MASTERS
    report_every: float | None = None
    namespace: str = DEFAULT_NAMESPACE
    runlog_url: str = DEFAULT_BROKER_URL
    ledger_url: str = default_ledger_url(DEFAULT_NAMESPACE)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Read the ``EXAMPLE_*`` variables; an empty variable counts as unset."""
        broker = env.get("EXAMPLE_BROKER_URL") or DEFAULT_BROKER_URL
        every = env.get("EXAMPLE_REPORT_EVERY")
        namespace = env.get("EXAMPLE_NAMESPACE") or DEFAULT_NAMESPACE
        return cls(
            broker_url=broker,
            result_backend=env.get("EXAMPLE_RESULT_BACKEND") or broker,
            masters=split_urls(env.get("EXAMPLE_REDLOCK_MASTERS")) or DEFAULT_MASTERS,
            report_every=float(every) if every else None,
            namespace=namespace,
            runlog_url=env.get("EXAMPLE_RUNLOG_URL") or broker,
            ledger_url=env.get("EXAMPLE_LEDGER_URL") or default_ledger_url(namespace),
        )


def split_urls(value: str | None) -> tuple[str, ...]:
    """``"redis://a/0, redis://b/0"`` → both URLs, cut as ``redlock_masters`` strings are
    (only before a scheme: a comma inside a password stays in it)."""
    return tuple(redlock_split_urls(value or ""))

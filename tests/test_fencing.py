"""celery_redlock.fencing's common part: the fence check, the error, and imports that
bring in no database library."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

import celery_redlock.fencing
from celery_redlock import ConfigurationError, FenceRejected, LockError
from celery_redlock.fencing import MAX_FENCE, as_fence


@pytest.mark.parametrize("fence", [1, 2, 1_800_000_000_000_000, 2**53 + 1, MAX_FENCE])
def test_a_positive_int_up_to_a_bigint_is_a_fence(fence: int) -> None:
    assert as_fence(fence) == fence


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "fence must be an int (a lock's fence), not bool: True"),
        (False, "fence must be an int (a lock's fence), not bool: False"),
        (1.0, "fence must be an int (a lock's fence), not float: 1.0"),
        ("7", "fence must be an int (a lock's fence), not str: '7'"),
        (None, "fence must be an int (a lock's fence), not NoneType: None"),
        (0, "fence must be from 1 to 2**63 - 1, got 0"),
        (-3, "fence must be from 1 to 2**63 - 1, got -3"),
        (2**63, "fence must be from 1 to 2**63 - 1, got 9223372036854775808"),
        (10**400, "fence must be from 1 to 2**63 - 1, got an int of 1329 bits"),
    ],
)
def test_anything_else_is_refused_by_name(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}$"):
        as_fence(value)


def test_the_error_says_what_was_offered_and_what_stands() -> None:
    error = FenceRejected("orders (id=7)", 41, 42)
    assert isinstance(error, LockError)
    assert not isinstance(error, ConfigurationError)
    assert str(error) == "write to orders (id=7) rejected: fence 41 offered, 42 stands"
    assert (error.target, error.offered, error.standing, error.reason) == (
        "orders (id=7)",
        41,
        42,
        "higher",
    )
    missing = FenceRejected("orders (id=8)", 41, None, reason="missing")
    assert str(missing) == "write to orders (id=8) rejected: no such row (fence 41 offered)"


def test_the_fencing_names_are_pinned() -> None:
    import celery_redlock.fencing.django
    import celery_redlock.fencing.redis
    import celery_redlock.fencing.sqlalchemy

    assert set(celery_redlock.fencing.__all__) == {"MAX_FENCE", "FenceRejected", "as_fence"}
    assert set(celery_redlock.fencing.sqlalchemy.__all__) == {
        "fenced_orm_update",
        "fenced_update",
        "fenced_upsert",
    }
    assert set(celery_redlock.fencing.django.__all__) == {"fenced_update"}
    assert set(celery_redlock.fencing.redis.__all__) == {
        "FENCE_FIELD",
        "VALUE_FIELD",
        "Fenced",
        "fenced_get",
        "fenced_get_async",
        "fenced_set",
        "fenced_set_async",
    }


def test_importing_fencing_brings_in_no_database_library() -> None:
    """``import celery_redlock.fencing`` (and its Redis check) work without SQLAlchemy or
    Django installed: each SQL submodule imports its own library, and only it."""
    code = (
        "import sys\n"
        "import celery_redlock.fencing, celery_redlock.fencing.redis\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'sqlalchemy', 'django', 'psycopg', 'celery'})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert celery_redlock.fencing.FenceRejected is FenceRejected

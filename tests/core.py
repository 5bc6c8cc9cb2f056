"""``pytest -p tests.core``: only the lock core's tests, as ``make test`` runs them against
the oldest redis-py we declare (``redis>=5.0``) besides the newest.

A test file is the core's when it imports nothing of Celery (not ``celery`` or ``kombu``,
not the Celery layer: ``celery_redlock.task``, ``beat``, ``cli``, ``_celery``, not the
tests' Celery helpers) and names none of its modules in a string (``-m celery`` in a
subprocess, a scheduler's dotted path). Read from each file's syntax tree, so a new test
file is sorted without a list to keep.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: Module prefixes that put a test file outside the core.
CELERY = (
    "celery",
    "kombu",
    "celery_redlock.task",
    "celery_redlock.beat",
    "celery_redlock.cli",
    "celery_redlock._celery",
    "celery_redlock.signals",
    "tests.celery_fixtures",
    "tests.celery_helpers",
    "tests.celery_tasks",
    "tests.apps",
    "tests.prefork_app",
    "tests.chaos",
    "example_project",
)
#: Names that, imported from the package itself, are the Celery layer.
CELERY_NAMES = {"SingletonTask", "install", "signals"}


def imports_celery(path: Path) -> bool:
    """Whether the test file at ``path`` imports Celery or our Celery layer."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
            if node.module == "celery_redlock":
                names += [f"celery_redlock.{a.name}" for a in node.names if a.name in CELERY_NAMES]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value]
        else:
            continue
        if any(name == p or name.startswith(f"{p}.") for name in names for p in CELERY):
            return True
    return False


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return imports_celery(collection_path) or None
    return None

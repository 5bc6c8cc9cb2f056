"""The prefork reaper's record file: what a child writes, clears and the main process reads.

The kill-and-free behaviour itself is tested end to end in test_task_prefork.py; these are
the file format's edges, on real files in a temporary directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_redlock._celery.reaper import _RECORD, Reaper, _child_of, _quote, _read


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Reaper]:
    """A reaper as a pool child sees it: enabled by its parent, then forked."""
    reaper = Reaper()
    reaper.directory = tmp_path
    reaper._after_fork()
    yield reaper
    reaper.directory = None


def _record_file(directory: Path) -> Path:
    (path,) = directory.glob("child.*.json")
    return path


def test_a_record_reads_back_and_clears(child: Reaper, tmp_path: Path) -> None:
    child.record("task-1", "tasks.sync:abc", "token-1")
    path = _record_file(tmp_path)
    assert _read(path) == {"task_id": "task-1", "resource": "tasks.sync:abc", "token": "token-1"}
    assert _child_of(path) == (os.getpid(), path.name.split(".")[2])
    child.forget("task-1")
    assert _read(path) is None


def test_any_text_reads_back_as_written(child: Reaper, tmp_path: Path) -> None:
    """The record is JSON built by hand: quotes, backslashes, control characters and
    non-ASCII text in a resource must come back unchanged."""
    resource = 'proj.t:"quoted" back\\slash \n\t\x00 caf\u00e9 \u2603 \U0001f512'
    child.record("task-1", resource, "token:owner")
    assert _read(_record_file(tmp_path)) == {
        "task_id": "task-1",
        "resource": resource,
        "token": "token:owner",
    }


def test_a_shorter_record_replaces_a_longer_one(child: Reaper, tmp_path: Path) -> None:
    child.record("task-1", "r" * 300, "token-1")
    child.forget("task-1")
    child.record("task-2", "short", "token-2")
    assert _read(_record_file(tmp_path)) == {
        "task_id": "task-2",
        "resource": "short",
        "token": "token-2",
    }


def test_forget_of_another_task_keeps_the_record(child: Reaper, tmp_path: Path) -> None:
    child.record("task-1", "res", "token-1")
    child.forget("task-0")  # a nested run's forget must not clear the outer record
    assert _read(_record_file(tmp_path)) is not None


def test_a_record_larger_than_the_file_grows_it(child: Reaper, tmp_path: Path) -> None:
    resource = "x" * 10_000
    child.record("task-1", resource, "token-1")
    entry = _read(_record_file(tmp_path))
    assert entry is not None
    assert entry["resource"] == resource


def test_outside_a_pool_child_nothing_is_recorded(tmp_path: Path) -> None:
    reaper = Reaper()
    reaper.directory = tmp_path  # enabled, but this is the main process: never forked
    reaper.record("task-1", "res", "token-1")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "content", [b"", b"\0" * 64, b'{"task_id": "t", "resource": "r"\0', b'{"task_id": 1}\0']
)
def test_empty_torn_or_foreign_records_read_as_nothing(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "child.1.2.json"
    path.write_bytes(content)
    assert _read(path) is None


def test_file_names_without_a_start_time_name_no_child() -> None:
    assert _child_of(Path("child.12.None.json")) is None
    assert _child_of(Path("child.x.5.json")) is None
    assert _child_of(Path("child.12.345.json")) == (12, "345")


@pytest.mark.parametrize(
    "text", ["plain", 'quote " and \\ backslash', "caf\u00e9 \U0001f600", "\x00\n\t", ""]
)
def test_the_hand_built_record_is_what_json_dumps_writes(text: str) -> None:
    """The record is built by hand for speed (see ``_quote``): byte for byte json.dumps's."""
    fields = {"task_id": text, "resource": f"r:{text}", "token": f"t:{text}"}
    built = _RECORD % tuple(_quote(v) for v in fields.values())
    assert built == json.dumps(fields).encode()

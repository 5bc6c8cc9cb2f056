"""Releasing a killed prefork child's lock from the worker's main process, owner-checked.

A pool child killed outright (hard time limit, ``revoke(terminate=True)``, SIGKILL, the
OOM killer) cannot release its lock; its lease would free the key within one lease. To
free it at once, a child records ``(task id, resource, token)`` in a small file of its own
while it holds the lock, and clears it when it releases. When Celery tells the main process that
a task was terminated, timed out or lost its worker, the main process waits until that
child has exited and releases with the recorded token.

Why this is safe: release by token deletes a key only where it still holds *this* token
(compare-and-delete), so it can never free a lock somebody else took meanwhile; and
waiting for the child's exit means the run that owned the lock is over. A child whose exit
is not seen in time keeps its lock until its lease runs out, as without this module.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from celery_redlock._core.sync import Redlock

__all__ = ["Reaper", "reaper"]

#: Whether this system has /proc (checked once: the reaper needs it to tell a child's
#: exit from a pid reused by another process).
_HAS_PROC = Path("/proc/self/stat").exists()

logger = logging.getLogger("celery_redlock")

#: Told ``(resource, why)`` of a child that ended itself for a lost lock.
OnLost = Callable[[str, str], None]

#: How often the main process looks whether a killed child has exited.
_EXIT_POLL = 0.02

#: A child's record file starts this big (bytes) and doubles when a record needs more.
_RECORD_SIZE = 4096


def _start_time(pid: int) -> str | None:
    """A process's start time (Linux ``/proc``), or None once it is gone or a zombie.

    Start time and pid together name one process: a pid reused by a newer child does not
    pass for the old one.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


class Reaper:
    """The registry of held locks shared by a prefork worker's main process and children.

    A child's record lives in a small file it maps into memory (``mmap``, shared): writing
    or clearing it is a memory copy, not a system call, so a task pays next to nothing for
    it. The main process reads the file as any file; the kernel's page cache is one copy.
    """

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.owner = 0  # the main process's pid
        self._child = False  # set after fork in a pool child of an enabled reaper
        self._identity: str | None = None  # this child's start time, read once
        self._map: mmap.mmap | None = None  # this child's record, mapped once
        self._current: str | None = None  # the task whose lock the record holds
        os.register_at_fork(after_in_child=self._after_fork)

    @property
    def enabled(self) -> bool:
        return self.directory is not None and _HAS_PROC

    def enable(self) -> None:
        """In the main process at worker start, before the pool forks its children."""
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="celery-redlock-held-"))
            # A cold shutdown (SIGQUIT) sends no worker_shutdown: clean up at exit too.
            atexit.register(self.disable)
        self.owner = os.getpid()

    def disable(self) -> None:
        if self.directory is not None and os.getpid() == self.owner:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def _after_fork(self) -> None:
        self._child = self.enabled
        self._map = None  # the parent's mapping and identity are not this child's
        self._identity = None
        self._current = None

    def _record_map(self, size: int) -> mmap.mmap | None:
        """This child's record, mapped at its first lock (one file per process: pid and
        start time), and grown when a record would not fit."""
        if self._map is not None and len(self._map) >= size:
            return self._map
        assert self.directory is not None
        pid = os.getpid()
        if self._identity is None:
            self._identity = _start_time(pid)
        path = self.directory / f"child.{pid}.{self._identity}.json"
        length = max(_RECORD_SIZE, 1 << (size - 1).bit_length())
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, length)
                mapped = mmap.mmap(fd, length)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return None
        if self._map is not None:
            self._map.close()
        self._map = mapped
        return mapped

    def record(self, task_id: str, resource: str, token: str) -> None:
        """In a child: note the lock it now holds (a no-op outside prefork children)."""
        if not self._child:
            return
        self._write(task_id, _RECORD % (_quote(task_id), _quote(resource), _quote(token)))

    def note_lost(self, task_id: str, resource: str, token: str, lost: str) -> None:
        """In a child about to kill itself for a lost lock (``lock_on_lost="kill"``): the
        record says why, for the main process to store as the task's result."""
        if not self._child:
            return
        entry = {"task_id": task_id, "resource": resource, "token": token, "lost": lost}
        self._write(task_id, json.dumps(entry).encode())

    def _write(self, task_id: str, data: bytes) -> None:
        """Put ``data`` in this child's record, for ``task_id``'s run."""
        mapped = self._record_map(len(data) + 1)
        if mapped is None:
            return
        # Emptied first and its first byte put back last: the record is either whole or
        # reads as empty, also when it replaces one that was never forgotten.
        mapped[0:1] = b"\0"
        mapped[1 : len(data) + 1] = data[1:] + b"\0"
        mapped[0:1] = data[:1]
        self._current = task_id

    def forget(self, task_id: str) -> None:
        """In a child: its lock is released (or about to be), nothing to reap.

        A child records one lock at a time (a prefork child runs one task at a time; a
        nested eager run replaces the record, and its outer lock falls back to its lease).
        """
        if self._current != task_id or self._map is None:
            return
        self._map[0:1] = b"\0"
        self._current = None

    def reap(
        self, task_id: str, dlm: Redlock, patience: float, on_lost: OnLost | None = None
    ) -> None:
        """In the main process: release ``task_id``'s lock once its child has exited,
        waiting up to ``patience`` seconds, in a background thread; then, if the child
        noted that it ended itself for a lost lock, ``on_lost(resource, why)``."""
        if not self.enabled or os.getpid() != self.owner:
            return
        assert self.directory is not None
        for path in self.directory.glob("child.*.json"):
            entry = _read(path)
            if entry is None or entry.get("task_id") != task_id:
                continue
            threading.Thread(
                target=self._reap_one,
                args=(path, dlm, patience, on_lost),
                name="celery-redlock-reaper",
                daemon=True,
            ).start()

    def reap_all(self, dlm: Redlock) -> None:
        """In the main process at worker shutdown, once the pool is gone: release what any
        exited child still recorded."""
        if not self.enabled or os.getpid() != self.owner:
            return
        assert self.directory is not None
        for path in self.directory.glob("*.json"):
            self._reap_one(path, dlm, patience=0)

    def _reap_one(
        self, path: Path, dlm: Redlock, patience: float, on_lost: OnLost | None = None
    ) -> None:
        child = _child_of(path)
        if child is None:
            return  # without the child's identity we cannot tell that it exited
        pid, started = child
        deadline = time.monotonic() + patience
        while _start_time(pid) == started:
            if time.monotonic() >= deadline:
                return  # still running: its own release or its lease will free the key
            time.sleep(_EXIT_POLL)
        entry = _read(path)  # read again now that the child is gone: what it held last
        if entry is not None:
            self._release(entry, pid, dlm)
            if on_lost is not None and "lost" in entry:
                on_lost(entry["resource"], entry["lost"])
        with contextlib.suppress(OSError):
            path.unlink()

    @staticmethod
    def _release(entry: dict[str, str], pid: int, dlm: Redlock) -> None:
        try:
            released = dlm.release(entry["resource"], entry["token"])
        except Exception as exc:  # an outage: the lease will free it
            logger.warning(
                "releasing %r after its worker exited failed: %s", entry["resource"], exc
            )
            return
        if released:
            logger.info(
                "released %r held by task %s after its pool process %d exited",
                entry["resource"],
                entry["task_id"],
                pid,
            )


def _child_of(path: Path) -> tuple[int, str] | None:
    """The pid and start time a record file is named after (``child.PID.START.json``)."""
    parts = path.name.split(".")
    if len(parts) != 4 or not parts[1].isdigit() or parts[2] == "None":
        return None
    return int(parts[1]), parts[2]


def _read(path: Path) -> dict[str, str] | None:
    """A child's record; None when it holds nothing (or the file is gone or torn)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    end = data.find(b"\0")
    try:
        entry = json.loads(data[: end if end >= 0 else len(data)])
    except ValueError:
        return None  # empty, or the child died while writing it
    if not isinstance(entry, dict) or not {"task_id", "resource", "token"} <= entry.keys():
        return None
    if not all(isinstance(entry[k], str) for k in ("task_id", "resource", "token")):
        return None
    if not isinstance(entry.get("lost", ""), str):
        del entry["lost"]
    return entry


#: A child's record, the bytes ``json.dumps`` would write for the three strings, built with
#: json's own string quoting (C code): it is written for every run in a prefork child.
_RECORD = b'{"task_id": %s, "resource": %s, "token": %s}'


def _quote(text: str) -> bytes:
    """A string quoted as ``json.dumps`` quotes it. Building the record by hand rather than
    with ``json.dumps`` is a copy kept for speed: the ``ours-child`` row of
    ``benchmarks/bench_instructions.py`` shows it pays."""
    quoted: str = json.encoder.encode_basestring_ascii(text)
    return quoted.encode()


#: The one registry of this process (inherited by forked children).
reaper = Reaper()

"""Releasing a killed prefork child's lock from the worker's main process, owner-checked.

A pool child killed outright (hard time limit, ``revoke(terminate=True)``, SIGKILL, the
OOM killer) cannot release its lock; its lease would free the key within one lease. To
free it at once, a child records ``(task id, resource, token)`` in a small file while it
holds the lock, and removes it when it releases. When Celery tells the main process that
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
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery_redlock.lock import Redlock

__all__ = ["Reaper", "reaper"]

#: Whether this system has /proc (checked once: the reaper needs it to tell a child's
#: exit from a pid reused by another process).
_HAS_PROC = Path("/proc/self/stat").exists()

logger = logging.getLogger("celery_redlock")

#: How often the main process looks whether a killed child has exited.
_EXIT_POLL = 0.02


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
    """The registry of held locks shared by a prefork worker's main process and children."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.owner = 0  # the main process's pid
        self._identity: str | None = None  # this child's start time, read once
        self._fd: int | None = None  # this child's own record file, opened once
        self._fd_pid = 0
        self._current: str | None = None  # the task whose lock the file records

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

    def _file(self) -> int | None:
        """This child's record file: one per process (pid and start time), opened at its
        first lock and rewritten in place after that, so that a task costs two writes
        rather than a file created and deleted."""
        pid = os.getpid()
        if self._fd is not None and self._fd_pid == pid:
            return self._fd
        assert self.directory is not None
        self._identity = _start_time(pid)
        path = self.directory / f"child.{pid}.{self._identity}.json"
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            return None
        self._fd_pid = pid
        return self._fd

    def record(self, task_id: str, resource: str, token: str) -> None:
        """In a child: note the lock it now holds (a no-op outside prefork children)."""
        if not self.enabled or os.getpid() == self.owner:
            return
        fd = self._file()
        if fd is None:
            return
        entry = {
            "task_id": task_id,
            "resource": resource,
            "token": token,
            "pid": os.getpid(),
            "started": self._identity,
        }
        data = json.dumps(entry).encode()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            self._current = task_id

    def forget(self, task_id: str) -> None:
        """In a child: its lock is released (or about to be), nothing to reap.

        A child records one lock at a time (a prefork child runs one task at a time; a
        nested eager run replaces the record, and its outer lock falls back to its lease).
        """
        fd = self._fd
        if fd is None or self._fd_pid != os.getpid() or self._current != task_id:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            self._current = None

    def reap(self, task_id: str, dlm: Redlock, patience: float) -> None:
        """In the main process: release ``task_id``'s lock once its child has exited,
        waiting up to ``patience`` seconds, in a background thread."""
        if not self.enabled or os.getpid() != self.owner:
            return
        assert self.directory is not None
        for path in self.directory.glob("child.*.json"):
            entry = _read(path)
            if entry is None or entry.get("task_id") != task_id:
                continue
            threading.Thread(
                target=self._reap_one,
                args=(path, dlm, patience),
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

    def _reap_one(self, path: Path, dlm: Redlock, patience: float) -> None:
        entry = _read(path)
        if entry is None or entry.get("started") is None:
            return  # without the child's identity we cannot tell that it exited
        deadline = time.monotonic() + patience
        while _start_time(entry["pid"]) == entry["started"]:
            if time.monotonic() >= deadline:
                return  # still running: its own release or its lease will free the key
            time.sleep(_EXIT_POLL)
        try:
            released = dlm.release(entry["resource"], entry["token"])
        except Exception as exc:  # an outage: the lease will free it
            logger.warning(
                "releasing %r after its worker exited failed: %s", entry["resource"], exc
            )
            return
        with contextlib.suppress(OSError):
            path.unlink()
        if released:
            logger.info(
                "released %r held by task %s after its pool process %d exited",
                entry["resource"],
                entry["task_id"],
                entry["pid"],
            )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone already, or the child died while writing it
    if not isinstance(entry, dict) or not {"resource", "token", "pid"} <= entry.keys():
        return None
    return entry


#: The one registry of this process (inherited by forked children).
reaper = Reaper()

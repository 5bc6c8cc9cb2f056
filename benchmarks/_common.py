"""What every benchmark prints the same way: the machine, package versions, which rows run."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Protocol


class HasModule(Protocol):
    """A benchmark row: ``module`` is the import it needs (None: always available)."""

    @property
    def module(self) -> str | None: ...


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def host_line() -> str:
    """CPU, cores, kernel and Python: the start of every benchmark's machine line."""
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def available(names: Sequence[str], rows: Mapping[str, HasModule]) -> list[str]:
    """The rows whose library is installed (peers live only in the bench virtualenvs)."""
    return [
        name
        for name in names
        if rows[name].module is None or importlib.util.find_spec(str(rows[name].module))
    ]

"""The live progress line: redrawn in place on a terminal, a plain line every few seconds
otherwise (CI logs, pipes), with events printed as they happen in both."""

from __future__ import annotations

import shutil
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Prints ``say`` lines and keeps one ``update`` line at the bottom."""

    def __init__(self, stream: TextIO, *, tty: bool, plain_every: float = 5.0) -> None:
        self.stream = stream
        self.tty = tty
        self.plain_every = plain_every
        self.started = time.monotonic()
        self._line = ""
        self._printed = -plain_every

    def restart_clock(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        """An event, on a line of its own, stamped with the time since the start."""
        self._clear()
        self.stream.write(f"  {self.elapsed():5.1f} s  {text}\n")
        self._draw()

    def update(self, line: str) -> None:
        self._line = line
        if self.tty:
            self._clear()
            self._draw()
        elif self.elapsed() - self._printed >= self.plain_every:
            self._printed = self.elapsed()
            self.stream.write(f"  {line}\n")
            self.stream.flush()

    def done(self) -> None:
        """Leave the terminal on a clean line."""
        self._clear()
        self._line = ""

    def _clear(self) -> None:
        if self.tty and self._line:
            self.stream.write("\r\x1b[2K")

    def _draw(self) -> None:
        """The line, cut to the terminal's width: a wrapped line could not be redrawn."""
        if self.tty and self._line:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write(self._line[:width])
        self.stream.flush()

"""A tiny progress protocol for long repository work (backup, restore). No rendering here: the CLI
turns these events into rich bars with throughput and ETA; ``--json`` callers may log them.

Contract: the callback is called from the thread that drives the operation, at most a few times per
second plus once at the end (``done=True``); it must be quick and must not raise (an exception from it
aborts the operation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Progress:
    """A snapshot of an operation's progress. ``*_total`` is 0 while still unknown."""

    phase: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    elapsed_s: float
    current: str = ""
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[Progress], None]


class Throttle:
    """Calls ``callback`` at most every ``interval_s`` seconds (and always for ``done``)."""

    def __init__(self, callback: ProgressCallback | None, phase: str, interval_s: float = 0.2) -> None:
        self.callback = callback
        self.phase = phase
        self.interval_s = interval_s
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, bytes_done: int, bytes_total: int, files_done: int, files_total: int,
                 current: str = "", *, done: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not done and now - self._last < self.interval_s:
            return
        self._last = now
        self.callback(Progress(self.phase, bytes_done, bytes_total, files_done, files_total,
                               now - self.start, current, done))

"""Start-up progress of a tier replica, as phases a reporter is told about: Ray-free, so the weights code and the
predictor can report without knowing where it goes (the model deployment publishes it for the ingress to read:
``deployments/startup_board.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable

# (phase, detail, fraction done or None)
Progress = Callable[[str, str, "float | None"], None]

RESOLVING, DOWNLOADING, VERIFYING, LOADING, WARMING_UP, READY, FAILED = (
    "resolving weights",
    "downloading",
    "verifying",
    "loading",
    "warming up",
    "ready",
    "failed",
)


def no_progress(phase: str, detail: str = "", fraction: float | None = None) -> None:
    """The reporter when nobody listens (the CLI, benchmarks, unit tests)."""


class TransferProgress:
    """Byte counts of a copy into ``downloading`` reports: percent, MB and MB/s, at most every ``every_s``."""

    def __init__(self, report: Progress, total: int | None, every_s: float = 0.5) -> None:
        self.report, self.total, self.every_s = report, total, every_s
        self.started = self.last = time.monotonic()
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last < self.every_s and (self.total is None or self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-6) / 1e6
        if self.total:
            detail = f"{100 * self.done / self.total:.0f}% of {self.total / 1e6:.0f} MB at {rate:.1f} MB/s"
            self.report(DOWNLOADING, detail, self.done / self.total)
        else:
            self.report(DOWNLOADING, f"{self.done / 1e6:.0f} MB at {rate:.1f} MB/s", None)

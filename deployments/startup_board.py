"""Where tier replicas publish their start-up progress and the ingress reads it.

Serve cannot call a replica whose ``__init__`` is still running, and the controller's status only says "has
taken more than 30s to initialize". So each tier replica pushes its phases, as ``serve_app/startup.py`` reports
them, to one small named actor per application (no CPU reserved, created by whichever replica comes first), and
the ingress's readiness thread reads it with each look at Serve's status: never on a request's path.

Why an actor: it is Ray's own shared state, on every node of the cluster, with no extra service and no private
API (Ray's internal KV is private; a file is not shared between nodes). It is detached, so it outlives the
replica that created it and a replacement replica finds it; it holds a few hundred bytes per tier.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray

from deployments import SERVE_LOGGER
from serve_app.schemas import StartupProgress
from serve_app.startup import FAILED, READY

logger = logging.getLogger(SERVE_LOGGER)
NAMESPACE = "serve"
# In the board's name: a detached board outlives a code update on a running cluster, and get_if_exists would hand
# the new code the old board (v1 did not age its reports). Raise it when the board's behaviour changes.
BOARD_VERSION = "v3"


def aged(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A report ``seconds`` later: a replica reports when its phase changes, so while a phase lasts (a conversion, a
    download between its progress lines) its ``seconds`` would stand still; they go on counting until it ends.
    Every report says how old it is (``seconds_ago``, from 0 as published): a failure from hours ago, kept while
    its replacement waits to be placed, must not read as today's. The board ages a report when it is read, the
    ingress again until it answers (a view of the board serves for seconds)."""
    age = {"seconds_ago": round((report.get("seconds_ago") or 0.0) + seconds, 1)}
    if report.get("phase") in (READY, FAILED):
        return {**report, **age}
    return {**report, **age, "seconds": round(report["seconds"] + seconds, 1)}


@ray.remote(num_cpus=0)
class StartupBoard:
    def __init__(self) -> None:
        self.reports: dict[str, tuple[dict[str, Any], float]] = {}  # tier -> (report, when it came, board's clock)

    def publish(self, tier: str, report: dict[str, Any]) -> None:
        self.reports[tier] = (report, time.monotonic())

    def read(self) -> dict[str, dict[str, Any]]:
        now = time.monotonic()  # the board's own clock for both ends: no clock is compared across nodes
        return {tier: aged(report, now - came) for tier, (report, came) in self.reports.items()}


def board(app_name: str) -> Any:
    """The application's board, created on first use (by a tier replica or the ingress)."""
    return StartupBoard.options(  # type: ignore[attr-defined]
        name=f"bgserve-startup-{BOARD_VERSION}-{app_name}",
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote()


class StartupReporter:
    """A tier replica's ``Progress``: each phase goes to the board, fire-and-forget (start-up never waits on it;
    a board that cannot be reached costs one warning)."""

    def __init__(self, app_name: str, tier: str) -> None:
        self.tier = tier
        self.started = time.monotonic()
        self.warned = False
        try:
            self.board: Any = board(app_name)
        except Exception as exc:
            self.board = None
            logger.warning("start-up progress will not be published: %s", exc)

    def __call__(self, phase: str, detail: str = "", fraction: float | None = None) -> None:
        logger.info("tier %s start-up: %s %s", self.tier, phase, detail)
        if self.board is None:
            return
        report = StartupProgress(
            phase=phase, detail=detail, fraction=fraction, seconds=round(time.monotonic() - self.started, 1)
        )
        try:
            self.board.publish.remote(self.tier, report.model_dump())
        except Exception as exc:
            if not self.warned:
                logger.warning("could not publish start-up progress: %s", exc)
                self.warned = True

    def failed(self, exc: BaseException) -> None:
        self(FAILED, f"{type(exc).__name__}: {exc}"[:500])


class BoardReader:
    """The ingress's side: the latest report of each tier, read from a handle looked up once (a named-actor
    lookup is a round trip to Ray's control store; the ingress reads it with every look at Serve's status)."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.handle: Any = None

    def read(self, timeout_s: float = 1.0) -> dict[str, StartupProgress]:
        if self.handle is None:
            self.handle = board(self.app_name)
        try:
            reports = ray.get(self.handle.read.remote(), timeout=timeout_s)
        except Exception:
            self.handle = None  # a board that died is made again by the next replica: look it up afresh next time
            raise
        return {tier: StartupProgress.model_validate(report) for tier, report in reports.items()}

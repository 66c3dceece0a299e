"""Which tiers can take a request, as a snapshot that requests read and never wait for.

A background thread asks Serve's controller (``serve.status()``) which tier deployments have a running replica,
the cluster whether it has a GPU, and the start-up board where starting replicas are (``startup_board.py``),
every ``REFRESH_S`` while anything is starting or changing, every ``STEADY_REFRESH_S`` once every deployment is
healthy with all its replicas running. A request only reads the last snapshot: a slow or
stopped controller delays the next snapshot, never a request. If the controller stops answering, the last known
state stands; with none known, requests are let through (and Serve's own errors on the call say what is wrong:
``model_client.py``).
"""

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve

from deployments import SERVE_LOGGER
from deployments.proxy_guard import SERVING_STATES
from deployments.startup_board import BoardReader, aged
from serve_app.errors import TierUnavailableError, summary
from serve_app.schemas import ServedTier, StartupProgress, TierInfo, gpu_missing_message
from serve_app.startup import FAILED, READY

logger = logging.getLogger(SERVE_LOGGER)

REFRESH_S = 1.0
# Once all is healthy and running. Each serve.status() costs this replica and Serve's controller CPU time (it
# rebuilds and pickles every deployment's config): read every second, it took ~3 % of a core on an idle 2-core box,
# time the model lost (docs/benchmarks.md). A tier call that finds its replica dead or the tier unavailable wakes the
# thread at once (``refresh_now``), so a failure is not left unseen for this long.
STEADY_REFRESH_S = 5.0
FIRST_SNAPSHOT_WAIT_S = 5.0  # at start only: how long the ingress waits for its first look at the tiers


@dataclass(frozen=True)
class ServeSnapshot:
    deployments: dict[str, Any] | None = None  # deployment name → Serve's DeploymentStatusInfo; None: never read
    cluster_gpus: float = 0.0
    startup: dict[str, StartupProgress] = field(default_factory=dict)  # tier → its replicas' latest report
    startup_read_at: float = field(default_factory=time.monotonic)  # when the board gave them
    unlisted: str = ""  # why Serve lists none of the app's deployments (then ``deployments`` are the last seen)


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def ago(seconds: float | None) -> str:
    """ " 6 h ago", " 12 min ago", " 40 s ago": how old a report is, in the unit a reader takes in at a glance."""
    if seconds is None:
        return ""
    if seconds >= 7200:
        return f" {seconds / 3600:.0f} h ago"
    return f" {seconds / 60:.0f} min ago" if seconds >= 120 else f" {seconds:.0f} s ago"


def settled(snapshot: ServeSnapshot) -> bool:
    """Every deployment healthy with only running replicas (a replica still starting shows as STARTING; the
    start-up board is not consulted, as it keeps the entries of replicas long gone)."""
    if not snapshot.deployments:
        return False
    return all(
        _value(d.status) == "HEALTHY"
        and all(_value(state) == "RUNNING" or not n for state, n in d.replica_states.items())
        for d in snapshot.deployments.values()
    )


def listed_deployments(application: Any, last: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The deployments a new snapshot holds, from Serve's status of this application; and, when the last known
    ones stand instead, why."""
    if application is None:
        return {}, ""
    if application.deployments:
        return dict(application.deployments), ""
    # This ingress runs, yet Serve lists no deployment of its application: a redeploy whose config failed to build
    # (DEPLOY_FAILED). Serve keeps running (and restarting) the deployed version, but its status no longer shows
    # them, and nothing public does. Counting them as gone would refuse every request: the last seen states are
    # kept for /readyz and /v1/tiers, and requests pass (``TierReadiness._state``).
    return last, f"{_value(application.status)}: {summary(application.message)}"


class TierReadiness:
    """The tiers' states from a snapshot of Serve's status that a background thread keeps fresh."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.snapshot = ServeSnapshot()
        self.board = BoardReader(app_name)
        self._first = threading.Event()
        self._warned_about = ""
        self._wake = threading.Event()
        # A daemon thread: it lives as long as the replica's process, and dies with it.
        threading.Thread(target=self._refresh_forever, name="tier-readiness", daemon=True).start()
        self._first.wait(FIRST_SNAPSHOT_WAIT_S)  # start with a real answer if the controller gives one soon

    def _take_snapshot(self) -> ServeSnapshot:
        application = serve.status().applications.get(self.app_name)
        deployments, kept_because = listed_deployments(application, self.snapshot.deployments)
        if kept_because and kept_because != self._warned_about:
            logger.warning(
                "Serve lists no deployment of application %r (%s): the running version serves on, and its tiers' "
                "last known states stand",
                self.app_name,
                kept_because,
            )
        self._warned_about = kept_because
        try:
            startup, read_at = self.board.read(), time.monotonic()
        except Exception as exc:  # progress is a nicety: Serve's status stands without it
            logger.debug("start-up board not readable: %s", exc)
            startup, read_at = self.snapshot.startup, self.snapshot.startup_read_at
        return ServeSnapshot(
            deployments=deployments,
            cluster_gpus=float(ray.cluster_resources().get("GPU", 0.0)),
            startup=startup,
            startup_read_at=read_at,
            unlisted=kept_because,
        )

    def refresh_now(self) -> None:
        """Take the next snapshot now rather than at the steady pace (a tier call just failed)."""
        self._wake.set()

    def _refresh_forever(self) -> None:
        failing = False
        while True:
            steady = False
            try:
                self.snapshot = self._take_snapshot()  # one reference swap: readers see the old or the new one
                self._first.set()
                if failing:
                    logger.info("Serve's status is readable again")
                failing = False
                steady = settled(self.snapshot)
            except Exception:
                if not failing:  # once per outage, not once a second
                    logger.warning("could not read Serve's status; keeping the last known tier states", exc_info=True)
                failing = True
            self._wake.wait(STEADY_REFRESH_S if steady else REFRESH_S)
            self._wake.clear()

    def _state(self, name: str) -> tuple[int | None, str, str]:
        """(serving replicas, or None when not known yet; Serve's status; Serve's message) of a deployment."""
        snapshot = self.snapshot
        if snapshot.deployments is None:
            return None, "UNKNOWN", "Serve's status has not been read yet"
        deployment = snapshot.deployments.get(name)
        if snapshot.unlisted:  # as last seen; not known now, so never a reason to refuse a request
            seen = _value(deployment.status) if deployment is not None else "UNKNOWN"
            return None, seen, f"as last seen; Serve lists no deployment of this application now ({snapshot.unlisted})"
        if deployment is None:
            return 0, "NOT_DEPLOYED", "no such deployment in this application"
        serving = sum(n for state, n in deployment.replica_states.items() if _value(state) in SERVING_STATES)
        return serving, _value(deployment.status), deployment.message

    def tier_info(self, tier: ServedTier) -> TierInfo:
        config, name = tier.config, tier.tier.value
        serving, status, message = self._state(name)
        snapshot = self.snapshot
        startup = snapshot.startup.get(name)
        if startup is not None and startup.seconds_ago is not None:  # the board's, as of now: a view serves up to 5 s
            startup = StartupProgress.model_validate(
                aged(startup.model_dump(), time.monotonic() - snapshot.startup_read_at)
            )
        message = summary(message)  # Serve's may hold a whole traceback: that is for `serve status`, not clients
        if serving == 0 and startup is not None and startup.phase != READY:
            doing = (
                f"start-up failed{ago(startup.seconds_ago)}:"
                if startup.phase == FAILED
                else f"starting, {startup.seconds:.0f} s in: {startup.phase}"
            )
            message = f"{doing} {startup.detail}".strip() + (f". {message}" if message else "")
        if serving == 0 and config.num_gpus > 0 and self.snapshot.cluster_gpus == 0:
            message = f"{gpu_missing_message({name: config.num_gpus})} {message}".strip()
        return TierInfo(
            tier=tier.tier,
            checkpoint=tier.spec.checkpoint.filename,
            weights=tier.weights_label,
            input_size=tier.input_size,
            runtime=config.runtime,
            device=config.resolved_device,
            ready=serving != 0,  # unknown (None) counts as ready: never refuse for want of a status
            status=status,
            message=message,
            startup=startup,
        )

    def all_ready(self, tiers: list[TierInfo]) -> bool:
        """For /readyz: every tier has a serving replica, as far as a snapshot has shown (a probe that cannot
        know yet says not ready; a request, by contrast, is let through)."""
        return self.snapshot.deployments is not None and all(t.ready for t in tiers)

    def raise_if_unavailable(self, tier: ServedTier) -> None:
        """On every request: a count from the snapshot; the full explanation only for a tier that has no replica."""
        if self._state(tier.tier.value)[0] == 0:
            info = self.tier_info(tier)
            why = info.message or "no replica of it serves yet"  # Serve gives no message while it starts one
            raise TierUnavailableError(f"the {tier.tier.value} tier is not ready ({info.status}): {why}")

"""When the ingress's readiness thread may slow down: only once every deployment is healthy and steady."""

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray.serve._private.common import DeploymentStatus, ReplicaState

from deployments.readiness import ServeSnapshot, TierReadiness, listed_deployments, settled
from serve_app.catalogue import Tier
from serve_app.errors import TierUnavailableError
from serve_app.schemas import ServedTier, StartupProgress, TierConfig
from tests.unit.test_errors import SERVE_CONSTRUCTOR_FAILURE


def deployment(status: DeploymentStatus = DeploymentStatus.HEALTHY, **replicas: int) -> SimpleNamespace:
    states = {ReplicaState(name): n for name, n in (replicas or {"RUNNING": 1}).items()}
    return SimpleNamespace(status=status, replica_states=states, message="")


def snapshot(startup: dict[str, StartupProgress] | None = None, **deployments: SimpleNamespace) -> ServeSnapshot:
    return ServeSnapshot(deployments=deployments, startup=startup or {})


def progress(phase: str) -> StartupProgress:
    return StartupProgress(phase=phase, seconds=3.0)


def test_steady_only_when_every_deployment_is_healthy_and_running() -> None:
    assert settled(snapshot(ingress=deployment(), fast=deployment(RUNNING=2, STARTING=0)))
    # not the start-up board: a replica still starting shows as STARTING, and the board keeps gone replicas' entries
    assert settled(snapshot({"fast": progress("warming up"), "gone": progress("failed")}, fast=deployment()))


def test_anything_starting_changing_or_unknown_keeps_the_fast_refresh() -> None:
    assert not settled(ServeSnapshot())  # never read
    assert not settled(snapshot())  # no deployments yet
    assert not settled(snapshot(fast=deployment(DeploymentStatus.UPDATING)))
    assert not settled(snapshot(fast=deployment(DeploymentStatus.UNHEALTHY)))
    assert not settled(snapshot(fast=deployment(RUNNING=1, STARTING=1)))
    assert not settled(snapshot(fast=deployment(RUNNING=1, STOPPING=1)))


def test_a_failed_tier_call_wakes_the_steady_refresh() -> None:
    """At the steady pace the thread sleeps 5 s; a tier call that finds its replica dead asks for a look now."""
    import threading

    from deployments.readiness import TierReadiness

    looks: list[float] = []
    looked = threading.Event()

    class Watched(TierReadiness):  # a subclass, not a monkeypatch: the daemon thread outlives the test, and must
        def _take_snapshot(self) -> ServeSnapshot:  # never reach the real serve.status() (it would start a Ray)
            looks.append(time.monotonic())
            looked.set()
            return snapshot(fast=deployment())  # settled: the next look would be 5 s away

    watched = Watched("app")
    time.sleep(0.2)
    assert len(looks) == 1
    looked.clear()
    watched.refresh_now()
    assert looked.wait(1.0) and len(looks) == 2 and looks[1] - looks[0] < 1.0


def test_a_redeploy_that_failed_to_build_leaves_the_running_tiers_as_they_were() -> None:
    """Serve lists no deployment while the application is DEPLOY_FAILED (the new config did not build), yet the
    running version serves on: the last known states stand, so no request is refused for it."""
    running = {"ingress": deployment(), "fast": deployment()}
    failed = SimpleNamespace(status="DEPLOY_FAILED", deployments={}, message="Traceback...\nValueError: bad args")
    assert listed_deployments(failed, running) == (running, "DEPLOY_FAILED: Traceback... ValueError: bad args")
    assert listed_deployments(failed, None)[0] is None  # nothing known yet: requests pass, /readyz waits
    healthy = SimpleNamespace(status="RUNNING", deployments={"fast": deployment()}, message="")
    assert listed_deployments(healthy, running) == (healthy.deployments, "")
    assert listed_deployments(None, running) == ({}, "")  # the application itself is gone


class Fixed(TierReadiness):  # never reaches the real serve.status() (it would start a Ray)
    def __init__(self, fixed: ServeSnapshot) -> None:
        self.fixed = fixed
        super().__init__("app")

    def _take_snapshot(self) -> ServeSnapshot:
        return self.fixed


def test_a_tier_that_failed_to_start_says_why_in_one_line(tmp_path: Path) -> None:
    """What a client reads (a 503's message, /v1/tiers): Serve's sentence and the exception, no traceback, and the
    board's reason once."""
    failed = deployment(DeploymentStatus.DEPLOY_FAILED, RUNNING=0)
    failed.message = SERVE_CONSTRUCTOR_FAILURE
    board = {"fast": StartupProgress(phase="failed", detail="WeightsUnavailableError: no such file", seconds=2.0)}
    readiness = Fixed(snapshot(board, fast=failed))
    tier = ServedTier(tier=Tier.FAST, config=TierConfig(), weights_dir=tmp_path)
    message = readiness.tier_info(tier).message
    assert message.startswith("start-up failed: WeightsUnavailableError: no such file. The deployment failed")
    assert message.endswith("IndexError: pop from empty list")
    assert "\x1b" not in message and "File " not in message and "failed failed" not in message


def test_an_old_failure_kept_on_the_board_says_how_old_it_is(tmp_path: Path) -> None:
    """The board keeps a tier's last report across redeploys: while the new replica waits to be placed, a failure
    from six hours ago read as the reason now."""
    from deployments.startup_board import aged

    old = aged({"phase": "failed", "detail": "WeightsUnavailableError: gone", "fraction": None, "seconds": 2.0}, 21600)
    board = {"fast": StartupProgress.model_validate(old)}
    readiness = Fixed(snapshot(board, fast=deployment(DeploymentStatus.UPDATING, STARTING=1)))
    tier = ServedTier(tier=Tier.FAST, config=TierConfig(), weights_dir=tmp_path)
    assert readiness.tier_info(tier).message.startswith("start-up failed 6 h ago: WeightsUnavailableError: gone")
    assert readiness.tier_info(tier).startup.seconds_ago == 21600  # type: ignore[union-attr]


def test_reports_keep_aging_between_two_reads_of_the_board(tmp_path: Path) -> None:
    """A snapshot serves for up to 5 s: `seconds_ago` (and a phase's running `seconds`) stood still in between."""
    import time

    loading = StartupProgress(phase="loading", seconds=4.0, seconds_ago=1.0)
    starting = {"fast": deployment(DeploymentStatus.UPDATING, STARTING=1)}
    read = ServeSnapshot(deployments=starting, startup={"fast": loading}, startup_read_at=time.monotonic() - 30)
    info = Fixed(read).tier_info(ServedTier(tier=Tier.FAST, config=TierConfig(), weights_dir=tmp_path))
    assert info.startup is not None and 31 <= info.startup.seconds_ago < 33 and 34 <= info.startup.seconds < 36  # type: ignore[operator]
    assert "starting, 34 s in" in info.message or "starting, 35 s in" in info.message, info.message


def test_the_ingress_looks_the_board_up_again_after_it_died() -> None:
    """The handle was looked up once: a board that died (its node lost) was read in vain for good, while the next
    replica made a new one."""
    import ray

    from deployments.startup_board import BoardReader

    def dead() -> object:
        raise ray.exceptions.RayActorError()

    reader = BoardReader("app")
    reader.handle = SimpleNamespace(read=SimpleNamespace(remote=dead))  # a handle whose actor is gone
    with pytest.raises(ray.exceptions.RayActorError):
        reader.read()
    assert reader.handle is None  # the next read looks it up (and finds the new board)


def test_a_starting_replicas_seconds_count_on_between_its_reports() -> None:
    """A replica reports when its phase changes: 24 s into one long conversion, /v1/tiers said "0 s in" throughout.
    The board ages each report by the time since it came; a finished start-up keeps how long it took."""
    from deployments.startup_board import aged

    loading = {"phase": "loading", "detail": "openvino", "fraction": None, "seconds": 0.4}
    assert aged(loading, 23.7)["seconds"] == 24.1 and aged(loading, 23.7)["phase"] == "loading"
    for done in ("ready", "failed"):
        assert aged({**loading, "phase": done}, 23.7)["seconds"] == 0.4


def test_while_serve_lists_no_deployment_no_request_is_refused_for_a_state_last_seen(tmp_path: Path) -> None:
    """A tier still starting when a redeploy failed to build may be running by now: Serve no longer says. It is
    shown as last seen, and requests pass (Serve routes them to whatever replica there is)."""
    starting = deployment(DeploymentStatus.UPDATING, STARTING=1)
    readiness = Fixed(ServeSnapshot(deployments={"fast": starting}, unlisted="DEPLOY_FAILED: ValueError: bad args"))
    tier = ServedTier(tier=Tier.FAST, config=TierConfig(), weights_dir=tmp_path)
    readiness.raise_if_unavailable(tier)
    with pytest.raises(TierUnavailableError) as refused:  # what a listed deployment in that state gets
        Fixed(ServeSnapshot(deployments={"fast": starting})).raise_if_unavailable(tier)
    # Serve has no message for a replica it is starting: the reason was empty after its colon.
    assert str(refused.value.message).endswith("(UPDATING): no replica of it serves yet")
    info = readiness.tier_info(tier)
    assert info.ready and info.status == "UPDATING" and "as last seen" in info.message and "bad args" in info.message
    assert readiness.all_ready([info])
    assert not Fixed(ServeSnapshot(unlisted="DEPLOY_FAILED: x")).all_ready([info])  # never seen: /readyz waits

"""When the ingress's readiness thread may slow down: only once every deployment is healthy and steady."""

from types import SimpleNamespace

from ray.serve._private.common import DeploymentStatus, ReplicaState

from deployments.readiness import ServeSnapshot, settled
from serve_app.schemas import StartupProgress


def deployment(status: DeploymentStatus = DeploymentStatus.HEALTHY, **replicas: int) -> SimpleNamespace:
    states = {ReplicaState(name): n for name, n in (replicas or {"RUNNING": 1}).items()}
    return SimpleNamespace(status=status, replica_states=states, message="")


def snapshot(startup: dict[str, StartupProgress] | None = None, **deployments: SimpleNamespace) -> ServeSnapshot:
    return ServeSnapshot(deployments=deployments, startup=startup or {})


def progress(phase: str) -> StartupProgress:
    return StartupProgress(phase=phase, seconds=3.0)


def test_steady_only_when_every_deployment_is_healthy_and_running() -> None:
    assert settled(snapshot(ingress=deployment(), fast=deployment(RUNNING=2, STARTING=0)))
    assert settled(snapshot({"fast": progress("ready")}, fast=deployment()))


def test_anything_starting_changing_or_unknown_keeps_the_fast_refresh() -> None:
    assert not settled(ServeSnapshot())  # never read
    assert not settled(snapshot())  # no deployments yet
    assert not settled(snapshot(fast=deployment(DeploymentStatus.UPDATING)))
    assert not settled(snapshot(fast=deployment(DeploymentStatus.UNHEALTHY)))
    assert not settled(snapshot(fast=deployment(RUNNING=1, STARTING=1)))
    assert not settled(snapshot(fast=deployment(RUNNING=1, STOPPING=1)))
    assert not settled(snapshot({"fast": progress("warming up")}, fast=deployment()))
    assert not settled(snapshot({"fast": progress("failed")}, fast=deployment()))

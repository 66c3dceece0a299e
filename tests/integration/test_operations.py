"""What operators rely on, all through `serve deploy`: live batching changes, Serve's own deployment options
passing through, start-up failures that explain themselves, and requests that never wait for Serve's
controller."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from ray.util.state import list_actors

from serve_app.mask_cache import RUN_THE_MODEL
from tests.conftest import png_bytes
from tests.integration.conftest import APP_NAME, Cluster, fast_tier_app
from tests.support import scenes
from tests.support.serve_run import until


def fast_replica_actors(cluster: Cluster) -> set[str]:
    actors = list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], detail=False)
    return {a.actor_id for a in actors if a.class_name == f"ServeReplica:{APP_NAME}:fast"}


def burst_batch_sizes(client: httpx.Client, count: int = 4) -> list[int]:
    uploads = [png_bytes(s.image) for s in scenes.make_scenes(seed=5150, count=count, height=96, width=96)]

    def send(data: bytes) -> int:
        response = client.post(  # the same images each burst: each a model call, or no batch forms
            "/v1/remove", params={"tier": "fast", "effect": "mask"}, content=data, headers=RUN_THE_MODEL
        )
        assert response.status_code == 200, response.text
        return int(response.headers["x-batch-size"])

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(send, uploads))


def test_batching_and_scaling_change_live_without_reloading_the_model(client: httpx.Client, cluster: Cluster) -> None:
    """Serve's `deployments:` list in the config: a tier's batching (its user_config) and its replica count apply
    to the running replica in place, as README's "Configs" says."""
    before = fast_replica_actors(cluster)
    assert len(before) == 1
    config = cluster.test_config()
    config["applications"][0]["deployments"] = [
        {"name": "fast", "num_replicas": 2, "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.5}}
    ]
    try:
        cluster.deploy(config)
        assert until(lambda: burst_batch_sizes(client) == [1, 1, 1, 1]), "max_batch_size=1 never took effect"
        assert until(lambda: len(fast_replica_actors(cluster)) == 2, 120), fast_replica_actors(cluster)
        assert before < fast_replica_actors(cluster)  # the first replica kept: reconfigured, not restarted
    finally:
        cluster.deploy(cluster.test_config())  # back to the builder's batching (4) and one replica
    assert until(lambda: len(fast_replica_actors(cluster)) == 1, 120)
    assert until(lambda: max(burst_batch_sizes(client)) > 1)


def explanation(client: httpx.Client, needle: str, timeout_s: float = 240) -> dict:  # type: ignore[type-arg]
    """The tier's /v1/tiers entry once its message contains ``needle``."""
    found: dict = {}  # type: ignore[type-arg]

    def check() -> bool:
        try:
            response = client.get("/v1/tiers")
        except httpx.TransportError:
            return False
        if response.status_code == 200 and needle in response.json()[0]["message"]:
            found.update(response.json()[0])
            return True
        return False

    if not until(check, timeout_s):
        pytest.fail(f"/v1/tiers never explained {needle!r}")
    return found


def test_a_redeploy_whose_config_fails_to_build_leaves_the_service_serving(
    client: httpx.Client, cluster: Cluster
) -> None:
    """An operator's typo in args: Serve marks the application DEPLOY_FAILED and lists no deployment, yet keeps the
    running version. The service serves on: no tier counts as gone (every request was refused with 503 before)."""
    from ray import serve

    from deployments.readiness import STEADY_REFRESH_S

    config = cluster.test_config()
    config["applications"][0]["args"]["defualt_tier"] = "fast"
    cluster.deploy(config)
    try:
        assert until(lambda: app_status() == "DEPLOY_FAILED", 60)
        assert "defualt_tier" in serve.status().applications[APP_NAME].message
        time.sleep(STEADY_REFRESH_S + 1)  # the ingress has read Serve's status since
        ready = client.get("/readyz")
        assert ready.status_code == 200 and set(ready.json()["tiers"].values()) == {"HEALTHY"}, ready.text
        image = png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image)
        for tier in ("fast", "balanced", "quality"):
            response = client.post("/v1/remove", params={"tier": tier, "effect": "mask"}, content=image)
            assert response.status_code == 200, response.text
    finally:
        cluster.deploy(cluster.test_config())
    assert until(lambda: app_status() == "RUNNING", 120)


def app_status() -> str:
    from ray import serve

    application = serve.status().applications.get(APP_NAME)
    return str(getattr(application.status, "value", application.status)) if application else ""


def ingress_replica_states() -> list[str]:
    from ray import serve

    application = serve.status().applications.get(APP_NAME)
    ingress = application.deployments.get("ingress") if application else None
    return [
        str(getattr(s, "value", s)) for s, n in (ingress.replica_states.items() if ingress else []) for _ in range(n)
    ]


@pytest.mark.slow  # two ingress restarts (~40 s); the guard's rule is unit-tested (tests/unit/test_proxy_guard.py)
def test_an_update_that_restarts_the_ingress_lets_it_finish_the_requests_it_holds(
    client: httpx.Client, cluster: Cluster
) -> None:
    """An update of the ingress restarts it: the old replica stops gracefully while the new one starts.
    A request it holds (here an upload still arriving) is finished and answered 200, not cut off with a 503 by the
    proxy guard, which sees no serving ingress replica meanwhile."""
    rng = np.random.default_rng(5)
    photo = png_bytes(rng.integers(0, 255, (600, 600, 3), dtype=np.uint8))  # ~1 MB: noise does not compress
    draining = threading.Event()

    def arriving_slowly() -> Iterator[bytes]:  # 40 KB/s, above the upload's minimum rate, until the update drains
        sent, chunk = 0, 16 * 1024
        deadline = time.monotonic() + 60
        while sent < len(photo) - chunk and not draining.is_set() and time.monotonic() < deadline:
            yield photo[sent : sent + chunk]
            sent += chunk
            time.sleep(0.4)
        for _ in range(6):  # a few more seconds: the guard looks every second
            if sent < len(photo) - chunk:
                yield photo[sent : sent + chunk]
                sent += chunk
            time.sleep(0.4)
        yield photo[sent:]

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(
            client.post, "/v1/remove", params={"tier": "fast", "effect": "mask"}, content=arriving_slowly()
        )
        time.sleep(1)
        config = cluster.test_config()
        # A change of the ingress's actor options restarts the ingress alone (a change under args would restart
        # the tiers too: it changes the application's code version).
        config["applications"][0]["deployments"] = [{"name": "ingress", "ray_actor_options": {"num_cpus": 0.4}}]
        cluster.deploy(config)
        try:
            assert until(lambda: "STOPPING" in ingress_replica_states(), 45), ingress_replica_states()
            draining.set()
            response = answer.result(timeout=120)
            assert response.status_code == 200 and response.headers["content-type"] == "image/png", response.text
        finally:
            draining.set()
            cluster.deploy(cluster.test_config())
            assert until(lambda: ingress_replica_states() == ["RUNNING"] and app_status() == "RUNNING", 120)
            assert until(lambda: client.get("/readyz").status_code == 200, 60)


def test_gpu_config_without_gpu_explains_itself(service: str, cluster: Cluster) -> None:
    """Ray would leave GPU replicas pending forever on this machine: the service says so instead of hanging."""
    args = fast_tier_app(deployment={"ray_actor_options": {"num_gpus": 0.5, "num_cpus": 0.1}})
    cluster.deploy(cluster.with_extra_app("gpu-check", "/gpu", args))
    try:
        with httpx.Client(base_url=f"{service}/gpu", timeout=30) as client:
            tier = explanation(client, "no GPU")
            assert tier["ready"] is False and tier["device"] == "cuda"
            assert "configs/cpu.yaml" in tier["message"]
            assert client.get("/readyz").status_code == 503
            started = time.monotonic()
            image = png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image)
            response = client.post("/v1/remove", content=image, headers={"content-type": "image/png"})
            assert time.monotonic() - started < 10  # answered at once, not left waiting for a GPU
            assert response.status_code == 503 and response.headers["retry-after"]
            error = response.json()["error"]
            assert error["code"] == "tier_unavailable" and "no GPU" in error["message"]
    finally:
        cluster.deploy(cluster.test_config())


def test_missing_weights_offline_explain_what_to_do(service: str, cluster: Cluster, tmp_path: Path) -> None:
    args = {"weights_dir": str(tmp_path), **fast_tier_app(weights="auto", allow_download=False)}
    # A second tier that starts: a request's form field may pick it over the query's failed one.
    args["tiers"]["balanced"] = {
        **args["tiers"]["fast"],
        "weights": "untrained",
        "allow_download": True,
        "base_size": 64,
    }
    cluster.deploy(cluster.with_extra_app("offline-check", "/offline", args))
    try:
        with httpx.Client(base_url=f"{service}/offline", timeout=30) as client:
            tier = explanation(client, "downloads are turned off")
            assert tier["ready"] is False and str(tmp_path / "ckpt_fast.pth") in tier["message"]
            # The replica's own report, from the start-up board: the phase it failed in, and why.
            assert until(lambda: (client.get("/v1/tiers").json()[0]["startup"] or {}).get("phase") == "failed", 30)
            startup = client.get("/v1/tiers").json()[0]["startup"]
            assert "WeightsUnavailableError" in startup["detail"] and "start-up failed" in tier_message(client)
            image = png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image)
            response = client.post("/v1/remove", content=image)
            assert response.status_code == 503
            assert "ckpt_fast.pth" in response.json()["error"]["message"]
            # "A field wins over the same query parameter": the query's failed tier refused this before.
            assert until(lambda: {t["tier"]: t["ready"] for t in client.get("/v1/tiers").json()}["balanced"], 120)
            picked = client.post("/v1/remove?tier=fast", files={"image": ("i.png", image)}, data={"tier": "balanced"})
            assert picked.status_code == 200 and picked.headers["x-tier"] == "balanced", picked.text
    finally:
        cluster.deploy(cluster.test_config())


def tier_message(client: httpx.Client) -> str:
    return str(client.get("/v1/tiers").json()[0]["message"])


def deployed_config(cluster: Cluster, app: str, deployment: str) -> dict[str, Any] | None:
    """The options Serve applied to a deployment, as the dashboard's REST API reports them (Ray's own client,
    which carries the cluster's auth token)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(cluster.dashboard).get_serve_details()
    deployments = details.get("applications", {}).get(app, {}).get("deployments", {})
    return deployments.get(deployment, {}).get("deployment_config")


def test_serve_options_pass_through_and_merge(service: str, cluster: Cluster) -> None:
    """A tier's and the ingress's `deployment:` reach Serve as Serve documents them, over the builder's defaults
    (ray_actor_options merged key by key, not replaced)."""
    autoscaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 3}
    args = {
        "default_tier": "fast",
        "ingress": {"deployment": {"health_check_period_s": 7, "ray_actor_options": {"num_cpus": 0.1}}},
        "tiers": {
            "fast": {
                "weights": "untrained",
                "base_size": 64,
                "warmup": False,
                "deployment": {
                    "autoscaling_config": autoscaling,
                    "health_check_timeout_s": 12,
                    "graceful_shutdown_timeout_s": 5,
                    "ray_actor_options": {"memory": 100 * 2**20},
                },
            }
        },
    }
    cluster.deploy(cluster.with_extra_app("options-check", "/options", args))
    try:
        assert until(lambda: deployed_config(cluster, "options-check", "fast") is not None), "the app never appeared"
        fast = deployed_config(cluster, "options-check", "fast")
        ingress = deployed_config(cluster, "options-check", "ingress")
        assert fast is not None and ingress is not None
        assert {k: fast["autoscaling_config"][k] for k in autoscaling} == autoscaling
        assert fast["health_check_timeout_s"] == 12 and fast["graceful_shutdown_timeout_s"] == 5
        assert fast["ray_actor_options"]["memory"] == 100 * 2**20
        assert fast["ray_actor_options"]["num_cpus"] == 0.25  # the default, kept beside the user's key
        assert fast["max_ongoing_requests"] == 32 and fast["max_queued_requests"] == 64
        # The ingress admits what fast holds at its most replicas (2 x 32 + 64) plus 32 uploads, plus 32 light slots
        assert ingress["max_ongoing_requests"] == 2 * 32 + 64 + 32 + 32 and ingress["max_queued_requests"] == 128
        # Serve's proxy answers a request over that queue 503 with Retry-After only when this says so
        assert ingress["backpressure_config"]["retry_after_s"] == 2
        assert fast["user_config"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.02}  # from `batching`
        assert ingress["health_check_period_s"] == 7 and ingress["ray_actor_options"]["num_cpus"] == 0.1
        with httpx.Client(base_url=f"{service}/options", timeout=60) as client:
            assert until(lambda: client.get("/readyz").status_code == 200, 120)
            image = png_bytes(scenes.make_scenes(2, 1, 64, 64)[0].image)
            assert client.post("/v1/remove", content=image, params={"effect": "mask"}).status_code == 200
    finally:
        cluster.deploy(cluster.test_config())


def test_requests_never_wait_for_serves_controller(client: httpx.Client, cluster: Cluster) -> None:
    """Readiness comes from a snapshot a background thread refreshes: a stopped (or slow, or overloaded) Serve
    controller delays the next snapshot, never a request. (Requests used to await a controller call with a 3 s
    timeout first: 3.4 s each while it was stopped.)"""
    alive_controllers = [("class_name", "=", "ServeController"), ("state", "=", "ALIVE")]
    (controller,) = list_actors(address=cluster.dashboard, filters=alive_controllers)
    image = png_bytes(scenes.make_scenes(seed=12, count=1, height=96, width=96)[0].image)

    def timed_remove() -> float:
        started = time.monotonic()
        response = client.post(
            "/v1/remove", params={"tier": "balanced", "effect": "mask"}, content=image, headers=RUN_THE_MODEL
        )
        assert response.status_code == 200, response.text
        return time.monotonic() - started

    timed_remove()
    os.kill(controller.pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # well past the snapshot's refresh period
        seconds = [timed_remove() for _ in range(3)]
        assert max(seconds) < 2.5, seconds
        started = time.monotonic()
        assert client.get("/readyz").status_code == 200 and time.monotonic() - started < 1.0
    finally:
        os.kill(controller.pid, signal.SIGCONT)


def test_api_keys_and_cors(service: str, cluster: Cluster, tmp_path: Path) -> None:
    """Keys from a file (rotated without a restart), Bearer or X-API-Key, 401 JSON without; health, readiness and
    docs open; CORS for the configured origin only."""
    keys = tmp_path / "api-keys"
    keys.write_text("# one key a line\nfirst-key\n")
    args = {
        "default_tier": "fast",
        "access": {"api_keys_file": str(keys), "cors_origins": ["https://app.example"]},
        "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
        "tiers": {"fast": {"weights": "untrained", "base_size": 64, "warmup": False}},
    }
    cluster.deploy(cluster.with_extra_app("keys-check", "/keys", args))
    image = png_bytes(scenes.make_scenes(4, 1, 64, 64)[0].image)
    try:
        with httpx.Client(base_url=f"{service}/keys", timeout=60) as client:
            assert until(lambda: client.get("/readyz").status_code == 200, 120)  # no key needed
            assert client.get("/healthz").status_code == 200 and client.get("/docs").status_code == 200

            def remove(**headers: str) -> httpx.Response:
                return client.post("/v1/remove", params={"effect": "mask"}, content=image, headers=headers)

            refused = remove()
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert remove(authorization="Bearer wrong-key").status_code == 401
            assert client.get("/v1/tiers").status_code == 401
            assert remove(authorization="Bearer first-key").status_code == 200
            again = remove(**{"x-api-key": "first-key"})
            assert again.status_code == 200 and again.headers["x-cache"] == "hit"  # the same caller's cached mask
            keys.write_text("second-key-rotated-in\n")  # rotation: no restart
            other_caller = remove(authorization="Bearer second-key-rotated-in")
            # Each caller has its own cache entries: a hit would tell this one that another sent these bytes.
            assert other_caller.status_code == 200 and other_caller.headers["x-cache"] == "miss"
            assert remove(authorization="Bearer first-key").status_code == 401
            preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
            allowed = client.options("/v1/remove", headers=preflight)
            assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
            sends = {**preflight, "access-control-request-headers": "if-none-match, cache-control, x-request-id"}
            assert client.options("/v1/remove", headers=sends).status_code == 200  # a page may send them
            answer = remove(authorization="Bearer second-key-rotated-in", origin="https://app.example")
            exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
            assert {"retry-after", "x-request-id", "etag", "server-timing"} <= exposed
            other = client.options("/v1/remove", headers={**preflight, "origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers
    finally:
        cluster.deploy(cluster.test_config())


def test_a_starting_tier_says_which_phase_it_is_in(service: str, cluster: Cluster) -> None:
    """While a tier replica is still in __init__ (Serve cannot call it), /v1/tiers, /readyz and a request's 503 say
    what it is doing, from the replica's own reports on the start-up board; then it is ready."""
    # A runtime that specialises on shapes warms up at the tier's size, 384 px here, on one thread: seconds of
    # "warming up" (on a CPU, eager warms up at 128 px, over before a look can see it).
    args = fast_tier_app(runtime="torchscript", base_size=384, cpu_threads=1, warmup=True)
    cluster.deploy(cluster.with_extra_app("slow-start", "/slow-start", args))
    seen: list[tuple[bool, str]] = []
    try:
        with httpx.Client(base_url=f"{service}/slow-start", timeout=30) as client:

            def warming_up() -> bool:
                try:
                    tiers = client.get("/v1/tiers").json()
                except (httpx.HTTPError, ValueError):
                    return False
                if not isinstance(tiers, list):  # the app's ingress is not up yet: the proxy's 404/503
                    return False
                (tier,) = tiers
                seen.append((tier["ready"], (tier["startup"] or {}).get("phase", "")))
                return not tier["ready"] and "warming up" in tier["message"]

            assert until(warming_up, 240), seen
            ready = client.get("/readyz")
            assert ready.status_code == 503
            # A race: the tier may serve by now, while the ingress's effects still warm up (then it is not listed).
            assert ready.json()["startup"].get("fast", {}).get("phase", "ready") in ("warming up", "ready"), ready.text
            response = client.post("/v1/remove", content=png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image))
            assert response.status_code == 503 and "warming up" in response.json()["error"]["message"]
            assert until(lambda: client.get("/readyz").status_code == 200, 240)
            assert client.get("/readyz").json()["startup"] == {}
            (tier,) = client.get("/v1/tiers").json()
            assert tier["startup"]["phase"] == "ready" and tier["startup"]["seconds"] > 0
    finally:
        cluster.deploy(cluster.test_config())


@pytest.mark.slow  # pymatting's kernels compile from cold: ~40 s of one core here, more on slower machines
def test_readyz_waits_for_the_effects_kernels_while_masks_are_served(
    service: str, cluster: Cluster, tmp_path: Path
) -> None:
    """An ingress whose numba cache is empty compiles pymatting's kernels in the background: meanwhile every tier is
    ready, /readyz answers 503 with effects warming_up, and a mask is served; then 200 with effects ready, and an
    rgba is served."""
    config = cluster.with_extra_app("cold-kernels", "/cold-kernels", fast_tier_app(base_size=64, cpu_threads=1))
    config["applications"][-1]["runtime_env"] = {"env_vars": {"NUMBA_CACHE_DIR": str(tmp_path / "numba")}}
    cluster.deploy(config)
    image = png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image)
    seen: list[tuple[int, Any]] = []
    try:
        with httpx.Client(base_url=f"{service}/cold-kernels", timeout=60) as client:

            def tiers_ready_effects_warming() -> bool:
                try:
                    tiers, ready = client.get("/v1/tiers").json(), client.get("/readyz")
                    body = ready.json()
                except (httpx.HTTPError, ValueError):
                    return False
                seen.append((ready.status_code, body))
                if not isinstance(tiers, list) or not isinstance(body, dict):  # the ingress is not up yet
                    return False
                return all(t["ready"] for t in tiers) and body.get("effects") == "warming_up"

            assert until(tiers_ready_effects_warming, 240), seen[-5:]
            assert seen[-1][0] == 503 and seen[-1][1]["ready"] is False, seen[-1]
            mask = client.post("/v1/remove", params={"effect": "mask"}, content=image)
            assert mask.status_code == 200 and mask.headers["content-type"] == "image/png", mask.text[:300]
            assert until(lambda: client.get("/readyz").status_code == 200, 300)
            assert client.get("/readyz").json()["effects"] == "ready"
            rgba = client.post("/v1/remove", params={"effect": "rgba"}, content=image)
            assert rgba.status_code == 200, rgba.text[:300]
            assert Image.open(io.BytesIO(rgba.content)).mode == "RGBA"
    finally:
        cluster.deploy(cluster.test_config())

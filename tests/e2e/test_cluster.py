"""The service on a real Ray cluster of two nodes, each its own process tree (tests/support/ray_cluster.py): the
test config deployed with `serve deploy` through the head's dashboard, every replica on the worker node, then the
worker node lost (every process of it killed) and a new one joining."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import png_bytes
from tests.integration.conftest import place_test_weights
from tests.support import scenes
from tests.support.ray_cluster import HEAD_IP, LocalRayCluster, cluster_env
from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import free_port, start_runner, until, wait_until_ready
from tests.support.slow_clients import SlowUpload

WORKER_CPUS = 4  # the test config asks 0.5 + 3 x 0.25 CPUs, and the start-up board a little
LOST_FOR_S = 25  # at most this long the test sends requests while no worker node is there...
STEADY_FOR_S = 5.0  # ...and no longer than this once the loss is known (the first answer came)
# Ray declares a node dead after its GCS health checks fail (by default 5 checks 3 s apart): until then Serve
# still sees the lost replicas, and a request waits for that (docs/operations.md, "Losing a node"). Once it is
# known, every request is answered at once.
NODE_DEATH_KNOWN_WITHIN_S = 20.0
ANSWER_ONCE_KNOWN_WITHIN_S = 1.0


@pytest.fixture
def two_nodes(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Iterator[LocalRayCluster]:
    env = cluster_env(place_test_weights(tmp_path_factory, segmenting_weights))
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray-cluster"), env)
    try:
        cluster.start_head()
        yield cluster
    finally:
        cluster.stop()  # every process of every node


def remove(client: httpx.Client, image: bytes, tier: str) -> httpx.Response:
    return client.post(
        "/v1/remove",
        params={"tier": tier, "effect": "mask"},
        content=image,
        headers={"content-type": "image/png"},
    )


def test_the_app_runs_on_the_worker_node_answers_503_while_it_is_lost_and_serves_again_when_one_joins(
    two_nodes: LocalRayCluster,
) -> None:
    first_worker = two_nodes.start_worker(WORKER_CPUS)
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["http_options"]["port"] = http_port = free_port()
    two_nodes.serve_deploy(config)
    image = png_bytes(scenes.make_scenes(seed=5, count=1, height=96, width=128)[0].image)
    url = f"http://127.0.0.1:{http_port}"

    with httpx.Client(base_url=url, timeout=30) as client:
        wait_until_ready(client, timeout_s=300)
        # Where Ray placed everything: replicas on the worker, only the control plane and the proxy on the head.
        nodes = two_nodes.alive_node_ips()
        actors = two_nodes.alive_actors()
        replicas = {a["class_name"]: a["node_id"] for a in actors if a["class_name"].startswith("ServeReplica:")}
        assert sorted(replicas) == [f"ServeReplica:bgserve:{d}" for d in ("balanced", "fast", "ingress", "quality")]
        assert set(replicas.values()) == {nodes[first_worker.ip]}, (replicas, nodes)
        head_actors = {a["class_name"] for a in actors if a["node_id"] == nodes[HEAD_IP]}
        assert {"ServeController", "ProxyActor"} <= head_actors, head_actors
        for tier in ("fast", "balanced", "quality"):
            assert remove(client, image, tier).status_code == 200

        # The worker node is lost: what clients get meanwhile.
        first_worker.kill()
        lost_at = time.monotonic()
        answers: list[tuple[float, int, dict[str, str], float]] = []  # (since the loss, status, body, seconds)
        while time.monotonic() - lost_at < LOST_FOR_S and not (
            answers and time.monotonic() - lost_at > answers[0][0] + answers[0][3] + STEADY_FOR_S
        ):
            sent = time.monotonic()
            try:
                response = remove(client, image, "fast")
                answers.append((sent - lost_at, response.status_code, response.json(), time.monotonic() - sent))
                assert response.headers.get("retry-after"), response.headers
            except httpx.TimeoutException:
                answers.append((sent - lost_at, 0, {}, time.monotonic() - sent))
            time.sleep(0.2)
        summary = [(round(at, 1), status, body.get("error"), round(took, 2)) for at, status, body, took in answers]
        print("while the worker node was lost (since the loss s, status, code, answer s):", summary)
        assert answers and all(status == 503 for _, status, _, _ in answers), summary
        assert all(body["error"]["code"] == "ingress_unavailable" for _, _, body, _ in answers), summary
        first_answered = answers[0][0] + answers[0][3]
        assert first_answered < NODE_DEATH_KNOWN_WITHIN_S, summary
        later = [took for at, *_, took in answers if at > first_answered]
        assert len(later) >= 5 and max(later) < ANSWER_ONCE_KNOWN_WITHIN_S, summary

        tiers = client.get("/v1/tiers")  # every route of the app is answered so, not only /v1/remove
        assert tiers.status_code == 503 and tiers.json()["error"]["code"] == "ingress_unavailable", tiers.text

        # A worker node joins: the app comes back on it without anyone redeploying it.
        second_worker = two_nodes.start_worker(WORKER_CPUS)
        assert until(lambda: remove(client, image, "fast").status_code == 200, timeout_s=240)
        wait_until_ready(client, timeout_s=120)
        for tier in ("fast", "balanced", "quality"):
            assert remove(client, image, tier).status_code == 200
        nodes = two_nodes.alive_node_ips()
        assert first_worker.ip not in nodes
        replicas = {
            a["class_name"]: a["node_id"]
            for a in two_nodes.alive_actors()
            if a["class_name"].startswith("ServeReplica")
        }
        assert set(replicas.values()) == {nodes[second_worker.ip]}, (replicas, nodes)


@pytest.mark.slow
def test_the_runner_on_a_running_cluster_drains_every_nodes_proxy_and_leaves_the_cluster_up(
    two_nodes: LocalRayCluster, tmp_path: Path
) -> None:
    """The Docker image's flow (`ray start --head`, then `python -m deployments.run`), on two nodes with a proxy on
    each (EveryNode, one port on this machine: connections spread over both). SIGTERM drains both proxies' requests
    before Serve shuts down; Ray itself stays up, as `ray start` left it."""
    two_nodes.start_worker(WORKER_CPUS)
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["proxy_location"] = "EveryNode"
    config["http_options"]["port"] = http_port = free_port()
    args = config["applications"][0]["args"]
    args["tiers"] = {"fast": args["tiers"]["fast"]}
    args.update(default_tier="fast", upload_stall_s=60)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = tmp_path / "run.log"
    runner = start_runner(f"{HEAD_IP}:{two_nodes.gcs_port}", path, two_nodes.env, log)
    url = f"http://127.0.0.1:{http_port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_until_ready(client, timeout_s=300)
        proxies = {a["node_id"] for a in two_nodes.alive_actors() if a["class_name"] == "ProxyActor"}
        assert len(proxies) == 2, proxies
        uploads = [SlowUpload(url) for _ in range(6)]
        for upload in uploads:
            upload.start()
        assert all(upload.begun.wait(30) for upload in uploads)
        time.sleep(0.5)  # their heads are at the proxies
        runner.send_signal(signal.SIGTERM)
        assert until(lambda: httpx.post(f"{url}/v1/remove", content=b"x", timeout=30).status_code == 503, timeout_s=20)
        time.sleep(1)
        assert runner.poll() is None
        for upload in uploads:
            upload.rest.set()
        for upload in uploads:
            upload.join(60)
        assert [u.answer.status_code if u.answer else repr(u.failure) for u in uploads] == [200] * 6
        assert runner.wait(timeout=60) == 0, log.read_text()[-3000:]
        said = log.read_text()
        assert "Drained in" in said and "No proxy guard answered" not in said, said[-3000:]
        assert HEAD_IP in two_nodes.alive_node_ips()  # the cluster outlives the service, as `ray start` left it
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()

"""Overload, slow uploads, deadlines and killed replicas against the deployed test app (configs/test.yaml: each
tier holds 8 + 8 requests, the ingress admits 80 image requests and has 112 slots, uploads stall out after
upload_stall_s).
Every answer is a 200 or a JSON error a client can act on; none is a 500, and the service is healthy after."""

from __future__ import annotations

import os
import select
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Thread
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from serve_app.mask_cache import RUN_THE_MODEL
from tests.conftest import png_bytes
from tests.integration.conftest import APP_NAME, Cluster, fast_tier_app
from tests.support import scenes
from tests.support.load import Outcome, burst, private_mb, replica_pids, send, summary, wait_until_healthy
from tests.support.reference import upload_stall_s_in_test_config
from tests.support.serve_run import until

FAST_CAPACITY = 16  # configs/test.yaml: max_ongoing_requests 8 + max_queued_requests 8
INGRESS_SLOTS = 112  # 3 tiers x 16 + UPLOAD_HEADROOM 32 image requests + CONTROL_HEADROOM 32
UPLOAD_STALL_S = upload_stall_s_in_test_config()
RETRIABLE = {"tier_unavailable", "overloaded", "ingress_unavailable", "deadline_exceeded"}


@pytest.fixture(scope="module")
def image() -> bytes:
    return png_bytes(scenes.make_scenes(seed=77, count=1, height=96, width=128)[0].image)


def assert_answered_or_retriable(outcomes: list[Outcome]) -> None:
    report = summary(outcomes)
    for outcome in outcomes:
        assert outcome.status in (200, 503, 504), report
        if outcome.status != 200:
            assert outcome.json_body and outcome.code in RETRIABLE and outcome.retry_after, report


def test_a_burst_over_capacity_gets_fast_503s_and_the_rest_finish(service: str, image: bytes) -> None:
    outcomes = burst(service, image, {"tier": "fast", "effect": "mask"}, count=4 * FAST_CAPACITY)
    print(summary(outcomes))
    assert_answered_or_retriable(outcomes)
    served = [o.seconds for o in outcomes if o.status == 200]
    refused = [o.seconds for o in outcomes if o.status == 503]
    assert served and refused, summary(outcomes)
    # Refused at once, not after queueing: sooner than the requests served. (A fixed 3 s failed at 3.003 s on a
    # loaded CI machine, where 48 refusals took 2.6 s at the median and the 16 served 5.3 s.)
    assert max(refused) < max(3.0, statistics.median(served)), summary(outcomes)
    assert max(served) < 30.0, summary(outcomes)  # accepted work finishes in bounded time
    assert wait_until_healthy(service) < 5
    assert send(service, image, {"tier": "fast", "effect": "mask"}).status == 200


def open_slow_upload(service: str) -> socket.socket:
    """A POST whose body stops after its first kilobyte (of 100 KB declared)."""
    address = urlsplit(service)
    connection = socket.create_connection((address.hostname, address.port), timeout=30)
    connection.sendall(
        f"POST /v1/remove?tier=fast HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Type: image/png\r\n"
        "Content-Length: 100000\r\nConnection: close\r\n\r\n".encode()
        + b"\x89PNG"
        + b"\0" * 1020
    )
    return connection


def read_answers(connections: list[socket.socket], since: float) -> tuple[list[tuple[int, bytes, float]], Thread]:
    """Each connection's status and body, and when it came (seconds after ``since``), read in the background."""
    answers: list[tuple[int, bytes, float]] = []

    def read_all() -> None:
        pending = {c.fileno(): (c, bytearray()) for c in connections}
        while pending:
            for fileno in select.select(list(pending), [], [], 30)[0]:
                connection, raw = pending[fileno]
                if chunk := connection.recv(65536):
                    raw += chunk
                    continue
                head, _, body = bytes(raw).partition(b"\r\n\r\n")
                answers.append((int(head.split(b" ", 2)[1]), body, time.monotonic() - since))
                del pending[fileno]

    reader = Thread(target=read_all, daemon=True)
    reader.start()
    return answers, reader


def test_health_answers_while_slow_uploads_fill_the_ingress(service: str) -> None:
    """More stalled uploads than the ingress has slots: the ones over the image-request limit get 503 at once, the
    rest hold their slots until the stall limit, and /healthz and /readyz answer meanwhile, in the slots kept for
    them. Without those slots they would wait for the first 408 (the ordering is checked, not a time that a busy
    machine could miss)."""
    opened = time.monotonic()
    connections = [open_slow_upload(service) for _ in range(INGRESS_SLOTS + 18)]
    try:
        answers, reader = read_answers(connections, since=opened)
        time.sleep(0.3)  # the uploads reach the ingress
        health_answered = []
        for path in ("/healthz", "/readyz", "/healthz", "/readyz"):
            response = httpx.get(f"{service}{path}", timeout=2 * UPLOAD_STALL_S)
            assert response.status_code == 200, (path, response.status_code)
            health_answered.append(time.monotonic() - opened)
        reader.join(timeout=3 * UPLOAD_STALL_S)
    finally:
        for connection in connections:
            connection.close()
    assert len(answers) == len(connections), answers
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {408, 503}, statuses
    assert statuses.count(503) >= len(connections) - 80, statuses  # over the 80 admitted: refused at once
    assert all(b'"overloaded"' in body for status, body, _ in answers if status == 503)
    first_release = min(seconds for status, _, seconds in answers if status == 408)
    assert first_release > UPLOAD_STALL_S  # the admitted uploads held their slots for the stall limit
    assert max(health_answered) < first_release, (health_answered, first_release)
    assert wait_until_healthy(service) < 5


def test_client_headers_cannot_change_the_servers_timeouts(service: str, image: bytes) -> None:
    """The fast tier waits 0.5 s for a batch. Serve's proxy would answer 408 at 0.2 s if it honoured the client's
    x-request-timeout-seconds; the proxy guard drops the header, so the server's timeout applies."""
    response = httpx.post(
        f"{service}/v1/remove",
        params={"tier": "fast", "effect": "mask"},
        content=image,
        headers={"x-request-timeout-seconds": "0.2", "x-request-disconnect-disabled": "?1"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def replica_log(cluster: Cluster, app: str, deployment: str) -> str:
    """What a replica wrote to its stderr (the replica's Serve log lines, ours included)."""
    import ray
    from ray.util.state import get_log, list_actors

    alive = list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")])
    (replica,) = [a for a in alive if a.class_name == f"ServeReplica:{app}:{deployment}"]
    log = "".join(
        get_log(address=ray.get_runtime_context().gcs_address, actor_id=replica.actor_id, suffix="err", tail=-1)
    )
    assert f"tier {deployment} batching" in log  # the log is the replica's own: it says how it batches
    return log


@pytest.fixture(scope="module")
def slow_batches(cluster: Cluster, service: str) -> Iterator[str]:
    """An extra app whose tiers wait 1 s for a batch: fast with a deadline (0.3 s) shorter than that wait,
    balanced with a long one (10 s)."""

    def tier(deadline_s: float) -> dict[str, object]:
        return {
            "weights": "test-segmenting.pth",
            "base_size": 128,
            "warmup": False,
            "cpu_threads": 1,
            "deadline_s": deadline_s,
            "batching": {"max_batch_size": 4, "batch_wait_timeout_s": 1.0},
            "deployment": {"ray_actor_options": {"num_cpus": 0.1}},
        }

    args = {
        "default_tier": "fast",
        "tiers": {"fast": tier(0.3), "balanced": tier(10.0)},
        "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
    }
    cluster.deploy(cluster.with_extra_app("slow-batches", "/slow", args))
    try:
        wait_until_healthy(f"{service}/slow")
        yield f"{service}/slow"
    finally:
        cluster.deploy(cluster.test_config())


def test_a_tier_deadline_no_header_lifts_and_late_work_is_not_run(
    cluster: Cluster, slow_batches: str, image: bytes
) -> None:
    """504 deadline_exceeded at the fast tier's 0.3 s, even with `x-request-timeout-seconds: 0` (which would turn
    Serve's timeout off), and the model never runs the image: neither the one the ingress gave up on, nor one
    whose deadline passed while it waited for its batch."""
    from ray import serve

    from serve_app.errors import DeadlineExceededError

    started = time.monotonic()
    response = httpx.post(
        f"{slow_batches}/v1/remove", content=image, headers={"x-request-timeout-seconds": "0"}, timeout=60
    )
    seconds = time.monotonic() - started
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    assert response.headers["retry-after"] and seconds < 1.5, seconds
    # Straight at the tier, with no ingress to cancel the call: the request reaches the model deployment in time,
    # but its deadline passes during the batch wait, and the batch skips it.
    handle = serve.get_deployment_handle("fast", "slow-batches")
    with pytest.raises(DeadlineExceededError, match="not run"):
        handle.predict.remote(np.zeros((128, 128, 3), np.uint8), time.time() + 0.3).result(timeout_s=30)
    time.sleep(1.0)  # the replica's log reaches its file
    log = replica_log(cluster, "slow-batches", "fast")
    assert "skipped 1 of 1 requests whose deadline had passed" in log, log[-3000:]
    assert "model call:" not in log, log[-3000:]


def test_work_for_a_client_that_left_is_not_done(cluster: Cluster, slow_batches: str, image: bytes) -> None:
    """A client gives up after 0.3 s, while its image waits for its batch, and asks (in vain: the proxy guard drops
    the header) that its request run on without it: Serve cancels it up to the tier, and the model never runs."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{slow_batches}/v1/remove",
            params={"tier": "balanced"},
            content=image,
            headers={"x-request-disconnect-disabled": "?1"},
            timeout=httpx.Timeout(10, read=0.3),
        )
    time.sleep(2.5)  # past the batch wait: had the image been run, the model would have logged its call
    log = replica_log(cluster, "slow-batches", "balanced")
    assert "model call:" not in log, log[-3000:]


def test_killing_the_tier_replica_mid_request_loses_nothing(cluster: Cluster, service: str, image: bytes) -> None:
    (pid,) = replica_pids(os.getpid(), APP_NAME, "fast")

    def kill() -> None:
        time.sleep(0.3)  # the requests wait for their batch at the replica
        os.kill(pid, signal.SIGKILL)

    outcomes = burst(service, image, {"tier": "fast", "effect": "mask"}, count=8, during=kill)
    print(summary(outcomes))
    assert_answered_or_retriable(outcomes)
    assert wait_until_healthy(service) < 60
    assert send(service, image, {"tier": "fast", "effect": "mask"}).status == 200


def test_killing_the_ingress_replica_mid_request_gets_retriable_answers(
    cluster: Cluster, service: str, image: bytes
) -> None:
    """The requests the dead ingress held cannot be finished: the proxy guard answers them 503 + Retry-After
    (not Serve's plain 500), and the service takes requests again once Serve has replaced the replica."""
    (pid,) = replica_pids(os.getpid(), APP_NAME, "ingress")

    def kill() -> None:
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)

    outcomes = burst(service, image, {"tier": "fast", "effect": "mask"}, count=8, during=kill)
    print(summary(outcomes))
    assert_answered_or_retriable(outcomes)
    assert any(o.code == "ingress_unavailable" for o in outcomes), summary(outcomes)
    assert wait_until_healthy(service) < 60
    assert send(service, image, {"tier": "fast", "effect": "mask"}).status == 200


# ~120 s of 320+ requests: out of the default run, which had grown to 15-16 min on 2 cores (the guide is ~15).
@pytest.mark.slow
def test_memory_levels_off_over_hundreds_of_requests(cluster: Cluster, service: str, image: bytes) -> None:
    """Private memory (RssAnon) of the ingress and a tier replica over 320 rgba requests (the heaviest effect) in
    bursts of 8, sampled after every burst. After an 80-request warm-up, the median of the last 80 requests' samples
    is within 64 MB of the median of the first 80's: levelling off. (Single samples swing by ~200 MB on the tier
    replica as the allocators take and return batch-sized blocks; a leak grows every burst and moves the median.
    Not VmRSS: in two CI runs it rose 84 and 97 MB on the balanced replica in this test while the same test alone
    stayed flat; VmRSS also counts shared pages, the object store's and library code's.)

    An allocator may also keep one more block for good, once: in a CI run the balanced replica's median stepped up
    76 MB in the full suite while this test alone stays flat within 3 MB over 800 requests. So a rise over 64 MB
    gets 160 more requests, and it must have stopped there (under 32 MB more): a leak of a size that moved the
    first comparison keeps growing and fails."""
    params = {"tier": "balanced", "effect": "rgba"}
    pids = {name: replica_pids(os.getpid(), APP_NAME, name)[0] for name in ("ingress", "balanced")}

    def run(requests: int) -> tuple[list[Outcome], dict[str, float]]:
        outcomes: list[Outcome] = []
        samples: dict[str, list[float]] = {name: [] for name in pids}
        for _ in range(requests // 8):
            outcomes += burst(service, image, params, count=8)
            for name, pid in pids.items():
                samples[name].append(private_mb(pid))
        return outcomes, {name: statistics.median(values) for name, values in samples.items()}

    run(80)
    outcomes, first = run(80)
    more, _ = run(80)
    last_outcomes, last = run(80)
    outcomes += more + last_outcomes
    print({name: (round(first[name]), round(last[name])) for name in pids})
    for name in pids:
        if last[name] - first[name] >= 64:
            between, _ = run(80)
            later_outcomes, later = run(80)
            outcomes += between + later_outcomes
            print(name, "after 160 more:", round(later[name]))
            assert later[name] - last[name] < 32, (name, first, last, later)
    assert all(o.status == 200 for o in outcomes), summary(outcomes)
    assert statistics.median(o.seconds for o in outcomes) < 10


def test_decoded_images_over_the_ingress_budget_get_503_and_the_held_one_finishes(
    service: str, cluster: Cluster
) -> None:
    """An image request holds its decoded image until it is answered, queued behind the model up to its deadline:
    the request limit alone let 76 images of 49 MP (11 GB) wait in one ingress. Here the budget is 0.5 MP: one
    image of 0.36 MP waits for its batch (5 s), a second one gets 503 overloaded at once, the first is served,
    and then the second fits."""
    args = fast_tier_app(base_size=64, warmup=False, batching={"max_batch_size": 4, "batch_wait_timeout_s": 5.0})
    args["ingress"]["max_decoded_megapixels"] = 0.5
    cluster.deploy(cluster.with_extra_app("pixels", "/pixels", args))
    image = png_bytes(np.full((600, 600, 3), 90, np.uint8))
    try:
        with httpx.Client(base_url=f"{service}/pixels", timeout=60) as client:
            assert until(lambda: client.get("/readyz").status_code == 200, 120)

            def remove() -> httpx.Response:
                return client.post("/v1/remove", content=image, params={"effect": "mask"}, headers=RUN_THE_MODEL)

            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(remove)
                time.sleep(1.0)  # in the ingress, and waiting for the batch to fill (5 s)
                second = remove()
            # Whichever reached the ingress first is held and served; on a busy machine it may be the second.
            refused, served = sorted([first.result(), second], key=lambda response: response.status_code, reverse=True)
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
            assert refused.json()["error"]["code"] == "overloaded" and "max_decoded_megapixels" in refused.text
            assert served.status_code == 200 and served.elapsed.total_seconds() > 4  # it did wait for its batch
            assert remove().status_code == 200  # the budget is free again
    finally:
        cluster.deploy(cluster.test_config())

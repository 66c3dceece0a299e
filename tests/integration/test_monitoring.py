"""Metrics as an operator sees them: a real Prometheus scrapes Ray's metrics endpoint while the test app serves
real requests (several tiers, effects and formats, and bad ones), then every expression of the Grafana dashboard
(configs/grafana/bgserve.json) is evaluated through Prometheus's HTTP API: each must parse and return data,
except the GPU panels, which must return nothing on a machine without a GPU (never a faked zero)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployments.grafana import PROXY_REFUSALS, gpu_only_expressions
from serve_app.mask_cache import RUN_THE_MODEL
from tests.conftest import ROOT, png_bytes
from tests.integration.conftest import APP_NAME, Cluster, fast_tier_app
from tests.support import scenes
from tests.support.prometheus import PROMETHEUS, Prometheus, prometheus
from tests.support.serve_run import until

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="needs Prometheus (scripts/test.sh installs it)")
DASHBOARD = ROOT / "configs" / "grafana" / "bgserve.json"
RAY_CLUSTER = "bgserve-test"  # the ray_io_cluster label the scrape puts on every series, as KubeRay's PodMonitor does


@pytest.fixture(scope="module")
def scraped(cluster: Cluster, service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    directory = tmp_path_factory.mktemp("prometheus")
    with prometheus([f"127.0.0.1:{cluster.metrics_port}"], directory, labels={"ray_io_cluster": RAY_CLUSTER}) as server:
        yield server


def on_the_board(expression: str, cluster: str = RAY_CLUSTER, application: str = APP_NAME) -> str:
    """A dashboard expression as Grafana sends it with its variables chosen: this cluster and this app, every tier."""
    for variable, value in (("$__rate_interval", "2m"), ("$tier", ".*"), ("$cluster", cluster)):
        expression = expression.replace(variable, value)
    return expression.replace("$application", application)


def send_traffic(url: str) -> None:
    image = png_bytes(scenes.make_scenes(seed=404, count=1, height=96, width=128)[0].image)
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(3):  # spread over a few scrapes, so that rate() has samples to compare
            for tier, effect, fmt in (
                ("fast", "mask", "png"),
                ("balanced", "rgba", "webp"),
                ("quality", "color", "jpeg"),
            ):
                response = client.post(  # the same image each round: each a model call, for the model's panels
                    "/v1/remove",
                    params={"tier": tier, "effect": effect, "format": fmt},
                    content=image,
                    headers=RUN_THE_MODEL,
                )
                assert response.status_code == 200, response.text
            several = client.post(
                "/v1/remove", params={"tier": "fast", "outputs": "rgba,mask"}, content=image, headers=RUN_THE_MODEL
            )
            assert several.status_code == 200, several.text
            rembg = client.post("/api/remove", files={"file": ("i.png", image)}, data={"model": "u2netp", "om": "true"})
            assert rembg.status_code == 200, rembg.text
            assert client.post("/v1/remove", params={"tier": "fast"}, content=b"not an image").status_code == 400
            assert client.post("/v1/remove", params={"tier": "ultra"}, content=image).status_code == 422
            time.sleep(2.0)


def test_every_dashboard_expression_returns_data(scraped: Prometheus, service: str) -> None:
    send_traffic(service)
    assert until(lambda: scraped.query('ray_bgserve_requests_total{code="invalid_image", tier="fast"}'), 90), (
        "our request counter never reached Prometheus"
    )
    assert until(lambda: scraped.query("ray_serve_actual_batch_size_bucket"), 90), "Serve's batch metrics never arrived"
    # The unknown tier is counted under `other`, not under the string the client sent.
    assert scraped.query('ray_bgserve_requests_total{tier="other", code="invalid_parameter"}')
    assert not scraped.query('ray_bgserve_requests_total{tier="ultra"}')
    # rembg's API is counted as its own api, with the tier and effect its form fields asked for; several outputs in
    # one ZIP under effect "outputs", format "zip".
    assert scraped.query('ray_bgserve_requests_total{api="rembg", tier="fast", effect="mask", status="200"}')
    assert scraped.query('ray_bgserve_requests_total{api="v1", effect="outputs", format="zip", status="200"}')
    dashboard = json.loads(DASHBOARD.read_text())
    gpu_only = gpu_only_expressions()
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expression = on_the_board(target["expr"])
            result = scraped.query(expression)  # fails on an expression Prometheus cannot parse
            if target["expr"] in gpu_only:
                assert result == [], (panel["title"], result)  # no GPU here: no series at all
            elif target["expr"] == PROXY_REFUSALS:
                pass  # data only once the guard refused something: test_refusals_by_the_proxy_guard_are_counted
            elif not result:
                empty.append((panel["title"], expression))
    known = scraped.metric_names("ray_serve_") + scraped.metric_names("ray_bgserve_")
    assert not empty, "panels that would show nothing:\n" + "\n".join(f"{t}: {e}" for t, e in empty) + f"\n{known}"
    # Another Ray cluster chosen: nothing of this one's. "All" (".*"): this one's.
    requests = dashboard["panels"][0]["targets"][0]["expr"]
    assert scraped.query(on_the_board(requests, cluster="another-cluster")) == []
    assert scraped.query(on_the_board(requests, cluster=".*"))


def by_step(scraped: Prometheus, metric: str) -> dict[str, float]:
    return {
        r["metric"]["step"]: float(r["value"][1]) for r in scraped.query(f'sum by (step) ({metric}{{tier="fast"}})')
    }


def test_the_dashboards_mean_step_times_are_the_served_ones(scraped: Prometheus, service: str) -> None:
    """The "where the time goes" panel divides an exact total by a count. (Ray exports a histogram's _sum rebuilt
    from bucket midpoints: a 0.1 ms step read as 2.5 ms.) Over a few requests, the total each step gained is the sum
    of what their Server-Timing headers said."""
    image = png_bytes(scenes.make_scenes(seed=406, count=1, height=96, width=128)[0].image)
    assert until(lambda: by_step(scraped, "ray_bgserve_step_latency_ms_count"), 90), "no step metrics yet"
    time.sleep(3)  # the last requests' increments have been exported and scraped
    totals, counts = (
        by_step(scraped, "ray_bgserve_step_ms_total"),
        by_step(scraped, "ray_bgserve_step_latency_ms_count"),
    )
    served: dict[str, float] = {}
    with httpx.Client(base_url=service, timeout=60) as client:
        for _ in range(6):
            response = client.post(
                "/v1/remove", params={"tier": "fast", "effect": "mask"}, content=image, headers=RUN_THE_MODEL
            )
            assert response.status_code == 200, response.text
            for part in response.headers["server-timing"].split(", "):
                step, duration = part.split(";dur=")
                served[step] = served.get(step, 0.0) + float(duration)
    assert until(lambda: by_step(scraped, "ray_bgserve_step_latency_ms_count")["decode"] == counts["decode"] + 6, 60)
    gained = {
        step: total - totals.get(step, 0.0) for step, total in by_step(scraped, "ray_bgserve_step_ms_total").items()
    }
    for step, milliseconds in served.items():  # the header rounds each step to 0.1 ms
        assert abs(gained[step] - milliseconds) <= 6 * 0.05 + 1e-6, (step, gained[step], milliseconds)


def ingress_log_records(cluster: Cluster) -> list[dict[str, Any]]:
    """The JSON records of the test app's ingress replica log files (configs/test.yaml: `encoding: JSON`)."""
    import ray
    from ray.util.state import get_log, list_logs

    address, node = ray.get_runtime_context().gcs_address, ray.get_runtime_context().get_node_id()
    files = [
        f
        for names in list_logs(address=address, node_id=node, glob_filter="serve/replica_bgserve_ingress_*").values()
        for f in names
    ]
    assert files, f"no ingress replica log in {list_logs(address=address, node_id=node)}"
    records = []
    for name in files:
        for line in "".join(get_log(address=address, node_id=node, filename=name, tail=-1)).splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def test_one_json_access_line_per_request_with_its_request_id(cluster: Cluster, service: str) -> None:
    image = png_bytes(scenes.make_scenes(seed=405, count=1, height=96, width=128)[0].image)
    ok = httpx.post(
        f"{service}/v1/remove",
        params={"tier": "fast", "effect": "mask"},
        content=image,
        headers={"X-Request-ID": "trace-ok-4242"},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "trace-ok-4242"  # echoed back by Serve
    bad = httpx.post(f"{service}/v1/remove", content=b"nope", headers={"X-Request-ID": "trace-bad-4242"}, timeout=60)
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "trace-bad-4242"

    def access_lines(request_id: str) -> list[dict[str, Any]]:
        return [r for r in ingress_log_records(cluster) if r.get("request_id") == request_id and "access" in r]

    again = httpx.post(  # the same image: a mask cache hit, logged as any answer
        f"{service}/v1/remove",
        params={"tier": "fast", "effect": "mask"},
        content=image,
        headers={"X-Request-ID": "trace-hit-4242"},
        timeout=60,
    )
    assert again.status_code == 200 and again.headers["x-cache"] == "hit", again.headers
    assert until(lambda: access_lines("trace-bad-4242") and access_lines("trace-hit-4242"), 30)
    (served,) = access_lines("trace-ok-4242")
    access = served["access"]
    assert access["tier"] == "fast" and access["effect"] == "mask" and access["status"] == "200" and not access["code"]
    assert access["input"] == "128x96" and access["model_input"] == "128x128" and access["batch_size"] >= 1
    assert access["upload_bytes"] == len(image)  # the README promises the upload's size
    assert set(access["steps_ms"]) == {"decode", "resize", "queue", "model", "upsample", "effect", "encode"}
    # Serve's text encoding shows only the message: it carries the same details.
    assert "input=128x96 model_input=128x128 batch_size=" in served["message"], served["message"]
    assert f"steps_ms=decode:{access['steps_ms']['decode']}," in served["message"], served["message"]
    assert 0 < access["ms"] < 60_000 and len(json.dumps(served)) < 4000  # sizes and timings, never image bytes
    (refused,) = access_lines("trace-bad-4242")
    assert refused["access"]["status"] == "400" and refused["access"]["code"] == "invalid_image"
    assert refused["access"]["upload_bytes"] == len(b"nope")  # a refused upload's size is logged too


def test_refusals_by_the_proxy_guard_are_counted(scraped: Prometheus, cluster: Cluster, service: str) -> None:
    """An application whose replicas cannot be placed (they ask for 64 CPUs): the proxy guard answers its requests
    503 at once, and counts them (no ingress replica sees them, and Serve's proxy metrics do not count them: seen
    here before the guard had its counter, when its 503s showed in no metric at all)."""
    cluster.deploy(cluster.with_extra_app("unplaced", "/unplaced", fast_tier_app(cpus=64, base_size=64)))
    image = png_bytes(scenes.make_scenes(seed=407, count=1, height=64, width=64)[0].image)
    try:
        with httpx.Client(base_url=f"{service}/unplaced", timeout=30) as client:

            def refused() -> bool:
                response = client.post("/v1/remove", content=image)
                return response.status_code == 503 and response.json()["error"]["code"] == "ingress_unavailable"

            # The first refusal may be ingress_lost (the request reached Serve's proxy before the guard had seen the
            # new app); from then on the guard knows it, and answers at once: no_ingress.
            assert until(refused, 60)
            assert refused()
            answered_at_once = 'ray_bgserve_proxy_refusals_total{application="unplaced", reason="no_ingress"}'
            assert until(lambda: scraped.query(answered_at_once), 60), scraped.metric_names("ray_bgserve_")
            for _ in range(5):  # once its series is scraped, so that rate() sees it grow
                assert refused()

        def counted() -> float:
            board_expression = on_the_board(PROXY_REFUSALS, application="unplaced")
            found = scraped.query(board_expression)
            return sum(float(r["value"][1]) for r in found if r["metric"].get("application") == "unplaced")

        assert until(lambda: counted() > 0, 60)
        total = scraped.query('ray_bgserve_proxy_refusals_total{application="unplaced"}')
        assert sum(float(r["value"][1]) for r in total) >= 7, total
    finally:
        cluster.deploy(cluster.test_config())

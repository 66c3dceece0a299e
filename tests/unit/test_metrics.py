"""The ingress's request recorder (deployments/metrics.py), driven as Serve drives the ingress's ASGI app, with the
real metric objects (they record without a Ray; the integration tests read them from Prometheus)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from deployments import SERVE_LOGGER, route_path
from deployments.metrics import IngressMetrics, RecordRequests


class Recorded(IngressMetrics):
    def __init__(self) -> None:
        super().__init__("fast")
        self.tags: list[dict[str, str]] = []

    def record(self, *args: Any) -> dict[str, str]:
        tags = super().record(*args)
        self.tags.append(tags)
        return tags


def run(app: Any, metrics: Recorded, cancel_after_s: float | None = None, path: str = "/v1/remove") -> None:
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"tier=fast", "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"x"}

    async def send(message: Message) -> None:
        pass

    async def main() -> None:
        task = asyncio.ensure_future(RecordRequests(app, metrics)(scope, receive, send))
        if cancel_after_s is None:
            await task
            return
        await asyncio.sleep(cancel_after_s)
        task.cancel()  # what Serve does to a request whose client left, or that the proxy gave up on
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_request_cancelled_before_its_answer_is_a_499_not_a_server_error(caplog: pytest.LogCaptureFixture) -> None:
    async def slow_route(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(5)

    metrics = Recorded()
    with caplog.at_level(logging.INFO, logger=SERVE_LOGGER):
        run(slow_route, metrics, cancel_after_s=0.1)
    assert [(t["status"], t["code"]) for t in metrics.tags] == [("499", "client_closed")]
    assert "POST /v1/remove 499 client_closed tier=fast" in caplog.text


def test_only_the_image_routes_are_recorded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A path that merely ends like an image route (a percent-encoded newline in it once forged a line in the text
    log) is neither counted nor logged; under a route prefix the routes still are."""

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"error": {"code": "not_found", "message": "m"}}, 404)(scope, receive, send)

    metrics = Recorded()
    with caplog.at_level(logging.INFO, logger=SERVE_LOGGER):
        run(not_found, metrics, path="/x\nFORGED 200 ok/v1/remove")
        run(not_found, metrics, path="/v2/v1/remove")
    assert metrics.tags == [] and "FORGED" not in caplog.text
    prefixed = {"type": "http", "path": "/cutouts/v1/remove", "root_path": "/cutouts"}
    assert route_path(prefixed) == "/v1/remove"


def test_answers_are_recorded_with_their_status_and_code() -> None:
    async def refused(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"error": {"code": "tier_unavailable", "message": "m"}}, 503)(scope, receive, send)

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    metrics = Recorded()
    run(refused, metrics)
    run(served, metrics)
    assert [(t["status"], t["code"]) for t in metrics.tags] == [("503", "tier_unavailable"), ("200", "")]


def test_a_step_that_took_no_time_is_recorded_too() -> None:
    """A mask cache hit's model step is 0 ms, which Ray's Counter refuses (ValueError): the answer must be recorded
    anyway (and its access line written: the recorder would log an error instead)."""
    tags = IngressMetrics("fast").record("v1", {}, 200, "", 0.01, {"step_seconds": {"decode": 0.002, "model": 0.0}})
    assert tags["status"] == "200"


def test_a_rembg_request_refused_before_its_options_were_understood_is_counted_under_its_models_tier() -> None:
    """rembg's options come as form fields too: one with a model rembg does not have was counted under the default
    tier, where /v1/remove counts an unknown tier as other."""
    metrics = IngressMetrics("balanced")

    def tier(options: dict[str, str], query: dict[str, str] | None = None) -> str:
        state = {"rembg_options": options} if options else {}
        return metrics.record("rembg", query or {}, 422, "invalid_parameter", 0.01, state)["tier"]

    assert tier({"model": "foo"}) == "other"
    assert tier({}, {"model": "foo"}) == "other"  # a query parameter, before the form was read
    assert tier({"model": "u2netp"}) == "fast"
    assert tier({"om": "true"}) == "balanced"
    understood = {"labels": {"tier": "quality"}, "rembg_options": {"model": "foo"}}
    assert metrics.record("rembg", {}, 200, "", 0.01, understood)["tier"] == "quality"
    assert metrics.record("v1", {"model": "foo"}, 422, "invalid_parameter", 0.01, {})["tier"] == "balanced"


def test_a_lost_gpu_is_logged_once_per_outage_not_every_second(caplog: pytest.LogCaptureFixture) -> None:
    """NVML stand-in (no GPU here): it fails three samples, then answers."""
    from types import SimpleNamespace

    from deployments.metrics import GpuMetrics

    answers = iter([RuntimeError("NVML_ERROR_GPU_IS_LOST")] * 3 + [None])

    def memory(handle: object) -> SimpleNamespace:
        error = next(answers)
        if error is not None:
            raise error
        return SimpleNamespace(used=1024)

    nvml = SimpleNamespace(
        nvmlDeviceGetMemoryInfo=memory, nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=7)
    )
    sampler = GpuMetrics(handle=None, nvml=nvml, period_s=1.0)
    failing = False
    with caplog.at_level(logging.INFO, logger=SERVE_LOGGER):
        for _ in range(4):
            failing = sampler.sample(failing)
    assert not failing
    said = [r.getMessage() for r in caplog.records if "GPU metrics" in r.getMessage()]
    assert len(said) == 2 and "GPU_IS_LOST" in said[0] and said[1] == "GPU metrics are back"

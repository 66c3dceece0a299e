"""Our metrics, through ``ray.serve.metrics``: Ray exports them on its Prometheus endpoint with a ``ray_`` prefix
(counters also get ``_total``), and adds the ``application``, ``deployment`` and ``replica`` tags itself, so a
tier replica's metrics carry their tier as ``deployment``. What Serve measures already (batch sizes and waits,
queue lengths, HTTP request counts and latencies, replica health and start-up) is Serve's: not repeated here.

Every tag value comes from a closed set (known tiers, effects, formats, error codes, status codes): a client
cannot grow the number of series by sending odd parameters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any
from urllib.parse import parse_qsl

from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import SERVE_LOGGER, route_path
from serve_app.catalogue import Tier
from serve_app.rembg_api import MODEL_TIERS
from serve_app.schemas import Effect, OutputFormat, RemoveParams

logger = logging.getLogger(SERVE_LOGGER)

# Milliseconds, from a cached 128 px mask (a few ms) to a quality-tier photo on a CPU (a minute and more).
LATENCY_MS_BOUNDARIES: list[float] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 60000, 120000]
# Uploads, in megapixels: thumbnails to the 50 MP limit (max_image_pixels).
MEGAPIXEL_BOUNDARIES: list[float] = [0.05, 0.25, 0.5, 1, 2, 4, 8, 12, 24, 50]
STEPS = ("decode", "resize", "queue", "model", "upsample", "effect", "encode")  # the Server-Timing steps
# nginx's status for a request whose client closed the connection first: no answer was sent, and it is no error of
# the service's (the access line and the metrics said 500 before).
CLIENT_CLOSED = 499
OTHER = "other"  # a tag value outside the closed set (an unknown tier in a refused request)
# Ray exports a gauge only in the report interval (RAY_metrics_report_interval_ms, 10 s) in which it was set: a
# value set once would vanish from Prometheus after one scrape. Our gauges are set again this often.
GAUGE_PERIOD_S = 1.0


SEVERAL, ZIP = "outputs", "zip"  # the effect and format tags of a request for several outputs (one ZIP)
TIERS, EFFECTS, FORMATS = (
    frozenset(t.value for t in Tier),
    frozenset({*(e.value for e in Effect), SEVERAL}),
    frozenset({*(f.value for f in OutputFormat), ZIP}),
)
# The image routes, by their path within the app, and their `api` tag: ours and rembg's.
REMBG = "rembg"
IMAGE_ROUTES = {"/v1/remove": "v1", "/api/remove": REMBG}


def request_labels(tier: str, params: RemoveParams) -> dict[str, str]:
    """The tier, effect and format tags of a request the ingress has understood (for rembg's API, only it knows
    them: they came as form fields)."""
    several = params.outputs is not None
    return {
        "tier": tier,
        "effect": SEVERAL if several else params.effect.value,
        "format": ZIP if several else params.format.value,
    }


def rembg_labels(options: Mapping[str, str]) -> dict[str, str]:
    """The tier a rembg request refused before its options were understood asked for: its ``model``'s, ``other``
    for a model rembg does not have (as an unknown tier is for /v1/remove), the default tier without one."""
    model = options.get("model")
    return {} if model is None else {"tier": MODEL_TIERS[model].value if model in MODEL_TIERS else OTHER}


def known(value: str | None, allowed: AbstractSet[str], default: str) -> str:
    if value is None:
        return default
    return value if value in allowed else OTHER


class IngressMetrics:
    """Per request at the ingress: count by tier, effect, format, status and error code; end-to-end latency;
    each step's latency; upload size."""

    def __init__(self, default_tier: str) -> None:
        self.default_tier = default_tier
        self.requests = Counter(
            "bgserve_requests",
            description="Image requests answered (POST /v1/remove, api v1; rembg's /api/remove, api rembg), by api, "
            "tier, effect, output format, HTTP status and error code.",
            tag_keys=("api", "tier", "effect", "format", "status", "code"),  # type: ignore[arg-type]  # Ray types a 1-tuple
        )
        self.latency = Histogram(
            "bgserve_request_latency_ms",
            description="Image requests, first byte in to last byte out, by tier and status class (2xx/4xx/5xx).",
            boundaries=LATENCY_MS_BOUNDARIES,
            tag_keys=("tier", "status_class"),  # type: ignore[arg-type]
        )
        self.steps = Histogram(
            "bgserve_step_latency_ms",
            description="Time per step of a served request (the Server-Timing steps), by tier and step.",
            boundaries=LATENCY_MS_BOUNDARIES,
            tag_keys=("tier", "step"),  # type: ignore[arg-type]
        )
        # Ray 2.60 exports a histogram's _sum rebuilt from bucket midpoints, not the values observed (1-2 ms steps
        # read as 2.5 ms each): a mean needs the exact total, counted here.
        self.step_ms = Counter(
            "bgserve_step_ms",
            description="Milliseconds spent in each step of served requests, summed (the exact total behind a mean "
            "per request: with bgserve_step_latency_ms_count), by tier and step.",
            tag_keys=("tier", "step"),  # type: ignore[arg-type]
        )
        self.megapixels = Histogram(
            "bgserve_input_megapixels",
            description="Size of the decoded uploads, in megapixels, by tier.",
            boundaries=MEGAPIXEL_BOUNDARIES,
            tag_keys=("tier",),
        )

    def record(
        self, api: str, query: Mapping[str, str], status: int, code: str, seconds: float, state: Mapping[str, Any]
    ) -> dict[str, str]:
        """Record one answer; returns the tags it was recorded under. The tier, effect and format are the route's
        (``request_labels``, in ``state``) once it understood the request, else the query's."""
        labels = state.get("labels") or (rembg_labels(state.get("rembg_options") or query) if api == REMBG else query)
        tier = known(labels.get("tier"), TIERS, self.default_tier)
        tags = {
            "api": api,
            "tier": tier,
            "effect": known(labels.get("effect"), EFFECTS, Effect.RGBA.value),
            "format": known(labels.get("format"), FORMATS, OutputFormat.PNG.value),
            "status": str(status),
            "code": code,
        }
        self.requests.inc(tags=tags)
        self.latency.observe(seconds * 1000, tags={"tier": tier, "status_class": f"{status // 100}xx"})
        for step, step_seconds in (state.get("step_seconds") or {}).items():
            if step in STEPS:
                self.steps.observe(step_seconds * 1000, tags={"tier": tier, "step": step})
                if step_seconds > 0:  # Ray's Counter refuses 0 (a cache hit's model step)
                    self.step_ms.inc(step_seconds * 1000, tags={"tier": tier, "step": step})
        if "megapixels" in state:
            self.megapixels.observe(state["megapixels"], tags={"tier": tier})
        return tags


class RecordRequests:
    """ASGI middleware around the ingress app: times each image request (``IMAGE_ROUTES``) and records it once,
    whichever layer answered (a route, an error handler, the upload limits or the key check): its metrics, and one
    access line in the replica's Serve log, with the details under ``access`` (a JSON object where the app's
    ``logging_config`` says ``encoding: JSON``; Serve adds the request id). The error code is read from the JSON
    body the client gets; the route leaves its labels, timings and sizes in ``request.state``. Never image bytes."""

    def __init__(self, app: ASGIApp, metrics: IngressMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = None
        if scope["type"] == "http":  # not lifespan, which has no path
            api = IMAGE_ROUTES.get(route_path(scope))
        if api is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, error_body = 500, b""

        async def watch(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < 4096:
                error_body += message.get("body", b"")
            await send(message)

        scope.setdefault("state", {})
        unexpected = cancelled = False
        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:  # the client left (or the proxy gave up on it) before the answer was sent
            cancelled, status = True, CLIENT_CLOSED
            raise
        except Exception:  # answered 500 by Starlette's outermost error middleware, outside this one
            unexpected, status = True, 500
            raise
        finally:
            try:
                query = dict(_query_pairs(scope))
                if unexpected:
                    code = "internal_error"
                elif cancelled:
                    code = "client_closed"
                else:
                    code = _error_code(error_body) if status >= 400 else ""
                seconds = time.perf_counter() - started
                tags = self.metrics.record(api, query, status, code, seconds, scope["state"])
                log_access(scope, tags, seconds, scope["state"])
            except Exception:  # metrics must never fail a request
                logger.exception("recording request metrics failed")


def log_access(scope: Scope, tags: Mapping[str, str], seconds: float, state: Mapping[str, Any]) -> None:
    served = state.get("served") or {}
    steps = {step: round(s * 1000, 1) for step, s in (state.get("step_seconds") or {}).items()}
    access = {**tags, "ms": round(seconds * 1000, 1), **served, "steps_ms": steps}
    # The same details in the text line, for Serve's default (text) log encoding: sizes, batch and steps.
    details = "".join(f" {name}={value}" for name, value in served.items())
    if steps:
        details += " steps_ms=" + ",".join(f"{step}:{ms}" for step, ms in steps.items())
    logger.info(
        "%s %s %s %s tier=%s effect=%s format=%s %.1fms%s",
        scope["method"],
        scope["path"],
        tags["status"],
        tags["code"] or "ok",
        tags["tier"],
        tags["effect"],
        tags["format"],
        seconds * 1000,
        details,
        extra={"access": access},
    )


def _query_pairs(scope: Scope) -> list[tuple[str, str]]:
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"))


def _error_code(body: bytes) -> str:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return OTHER
    return code if isinstance(code, str) and code.isidentifier() and len(code) <= 40 else OTHER


class ModelMetrics:
    """Per tier replica: model time per batch (by runtime), load time per phase, and GPU memory and utilisation
    from NVML where the replica has a GPU (nothing at all without one)."""

    def __init__(self) -> None:
        self.runtime = "loading"  # the runtime's name once loaded (auto resolves to one)
        self.batch = Histogram(
            "bgserve_model_batch_latency_ms",
            description="Model time per batch, by runtime (the tier is the deployment tag).",
            boundaries=LATENCY_MS_BOUNDARIES,
            tag_keys=("runtime",),
        )
        self.images = Counter(  # with the batch histogram's count: the exact mean batch size (see step_ms)
            "bgserve_model_images",
            description="Images the model ran, by runtime (the tier is the deployment tag).",
            tag_keys=("runtime",),
        )
        self.load = Gauge(
            "bgserve_model_load_seconds",
            description="Seconds each start-up phase of this replica took (weights, load, warmup).",
            tag_keys=("phase",),
        )

    def model_call(self, seconds: float, batch_size: int) -> None:
        self.batch.observe(seconds * 1000, tags={"runtime": self.runtime})
        self.images.inc(batch_size, tags={"runtime": self.runtime})

    def loaded(self, runtime: str, phases: Mapping[str, float], period_s: float = GAUGE_PERIOD_S) -> None:
        """Publish the start-up phases, again every ``period_s`` (see GAUGE_PERIOD_S)."""
        self.runtime = runtime

        def publish() -> None:
            while True:
                for phase, seconds in phases.items():
                    self.load.set(seconds, tags={"phase": phase})
                time.sleep(period_s)

        threading.Thread(target=publish, name="load-metrics", daemon=True).start()


class GpuMetrics:
    """GPU memory in use and utilisation of the replica's GPU, sampled by NVML (``nvidia-ml-py``, in the ``gpu``
    extra) every ``period_s`` on a daemon thread. ``start`` returns None where there is no GPU or no NVML: then
    no series exists, rather than a zero that looks like a measurement."""

    def __init__(self, handle: Any, nvml: Any, period_s: float) -> None:
        self.handle, self.nvml, self.period_s = handle, nvml, period_s
        self.memory = Gauge("bgserve_gpu_memory_used_bytes", description="GPU memory in use (NVML), whole device.")
        self.utilization = Gauge(
            "bgserve_gpu_utilization_percent", description="GPU utilisation over NVML's last sample period."
        )

    @classmethod
    def start(cls, device: str, period_s: float = GAUGE_PERIOD_S) -> GpuMetrics | None:
        if not device.startswith("cuda"):
            return None
        try:
            import pynvml  # nvidia-ml-py
            import torch

            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByUUID(_uuid(torch.cuda.get_device_properties(index)))
        except Exception as exc:  # no NVML library, no driver, an old torch: say so once, export nothing
            logger.warning("GPU metrics off: %s", exc)
            return None
        sampler = cls(handle, pynvml, period_s)
        threading.Thread(target=sampler._run, name="gpu-metrics", daemon=True).start()
        return sampler

    def _run(self) -> None:
        failing = False
        while True:
            failing = self.sample(failing)
            time.sleep(self.period_s)

    def sample(self, failing: bool) -> bool:
        """One sample; whether it failed. A failure is logged once per outage (a lost GPU logged every second,
        86,400 lines a day), and its end too."""
        try:
            self.memory.set(float(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used))
            self.utilization.set(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
        except Exception as exc:
            if not failing:
                logger.warning("GPU metrics: %s (said once until they come back)", exc)
            return True
        if failing:
            logger.info("GPU metrics are back")
        return False


def _uuid(properties: Any) -> str:
    uuid = str(properties.uuid)
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"

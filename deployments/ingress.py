"""The HTTP ingress: a FastAPI app whose routes call the core (``serve_app.pipeline``) around one call to the
tier's model deployment. The HTTP plumbing each route leans on lives beside it: errors as JSON
(``http_errors.py``), upload reading and the body limit (``uploads.py``), tier readiness (``readiness.py``), the
model call (``model_client.py``) and the OpenAPI extras (``openapi.py``).

CPU work (decode, resize, upsample, effects, encode) runs on a thread pool sized from the ingress's CPU share,
so the event loop keeps accepting requests, and concurrent requests reach the tier together, where they are
batched.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import INGRESS_DEPLOYMENT, SERVE_LOGGER, route_core_logs_to_serve
from deployments.access import ApiKeyCheck
from deployments.admission import Admission, to_the_end
from deployments.http_errors import UnexpectedErrors, install_error_handlers, validation_message
from deployments.metrics import IngressMetrics, RecordRequests, request_labels
from deployments.model_client import ModelClient
from deployments.openapi import READY_RESPONSES, REMBG_REQUEST, REMOVE_REQUEST_BODY, REMOVE_RESPONSES
from deployments.readiness import TierReadiness
from deployments.uploads import Upload, UploadLimits, is_multipart, listed, read_upload
from serve_app.auth import ApiKeys
from serve_app.catalogue import Tier
from serve_app.effects import warm_up_matting
from serve_app.errors import InvalidParameterError
from serve_app.mask_cache import MaskCache, MaskKey, content_hash, etag, matches
from serve_app.pipeline import (
    check_outputs_fit,
    decode_background,
    pixels_to_hold,
    postprocess,
    preprocess,
    result_headers,
    step_seconds,
)
from serve_app.rembg_api import RembgParams
from serve_app.schemas import AppConfig, MaskResult, RemoveParams, ServedTier, TierInfo

WEB_PAGE = (Path(__file__).parent / "web" / "index.html").read_text()  # plain HTML, CSS and JS: no CDN, no build
logger = logging.getLogger(SERVE_LOGGER)
P = ParamSpec("P")
R = TypeVar("R")


Options = TypeVar("Options", RemoveParams, RembgParams)


def sent_options(request: Request, upload: Upload) -> dict[str, str]:
    """A route's options as sent: the query's parameters with the multipart body's text fields over them (a field
    wins over the same query parameter)."""
    return {**request.query_params, **upload.fields}


def options_from(model: type[Options], options: Mapping[str, str]) -> Options:
    """A route's options, parsed; an unknown name or a bad value is a 422."""
    try:
        return model(**options)
    except ValidationError as exc:
        raise InvalidParameterError(validation_message(exc)) from None


def add_middleware(app: FastAPI, config: AppConfig) -> None:
    """The ingress's middleware. Runs outermost last-added first: metrics (sees every answer), CORS (answers a
    browser's preflight, and marks every answer for an allowed origin), the JSON 500 for the unexpected (inside
    CORS, so a page can read it), API keys, body limit."""
    app.add_middleware(
        UploadLimits,
        max_bytes=config.max_upload_bytes,
        stall_s=config.upload_stall_s,
        min_bytes_per_s=config.upload_min_bytes_per_s,
    )
    access = config.access
    keys = ApiKeys(access.api_keys_env, access.api_keys_file)
    if keys.enabled:
        app.add_middleware(ApiKeyCheck, keys=keys)
    app.add_middleware(UnexpectedErrors)
    if access.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=access.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[  # what a page's script sends: the key, the cache's headers, a request id
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "If-None-Match",
                "Cache-Control",
                "X-Request-ID",
            ],
            expose_headers=[
                "X-Tier",
                "X-Weights",
                "X-Batch-Size",
                "X-Runtime",
                "X-Model-Input",
                "Server-Timing",
                "X-Cache",
                "ETag",
                "Retry-After",  # what a page's retry waits on a 503
                "X-Request-ID",
                *(f"X-Foreground-{side}" for side in ("Top", "Left", "Width", "Height")),
            ],
        )
    app.add_middleware(RecordRequests, metrics=IngressMetrics(config.default_tier.value))


async def read_and_record(request: Request) -> Upload:
    """The request's upload, its size kept for the access line (RecordRequests), whatever the answer."""
    upload = await read_upload(request)
    request.state.served = {"upload_bytes": len(upload.image)}
    return upload


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()  # the app is built per replica by __serve_build_asgi_app__, from this app's config
class Ingress:
    def __init__(self, config: AppConfig, tiers: dict[Tier, ServedTier], models: dict[str, DeploymentHandle]) -> None:
        route_core_logs_to_serve()
        self.config = config
        self.tiers = tiers
        self.readiness = TierReadiness(serve.get_replica_context().app_name)
        self.models = {
            tier: ModelClient(tier.value, models[tier.value], served.config.deadline_s, self.readiness.refresh_now)
            for tier, served in tiers.items()
        }
        self.admission = Admission(config.image_request_limit(), int(config.ingress.max_decoded_megapixels * 1_000_000))
        self.mask_cache = MaskCache(int(config.ingress.mask_cache_mb * 1024 * 1024))
        # What else decides an answer's bytes, for its ETag (runtime and weights are in the mask's key): an upgrade,
        # another model input size or device make new ones; scaling a tier does not.
        self.served_as = {
            tier: f"bgserve {version('bgserve')} {served.base_size} {served.config.resolved_device}"
            for tier, served in tiers.items()
        }
        self.cpu_pool = ThreadPoolExecutor(config.ingress.cpu_workers, thread_name_prefix="ingress-cpu")
        # pymatting (rgba) loads or compiles its numba kernels on first use (tens of seconds on a fresh install): do
        # it now, not in a request; /readyz waits for it, so a client sent here once ready never waits for it.
        self.effects = "warming_up"  # then "ready", or "failed" (the service still serves; rgba tries again)
        threading.Thread(target=self.warm_up_effects, name="warm-up-matting", daemon=True).start()

    def warm_up_effects(self) -> None:
        try:
            warm_up_matting()
            self.effects = "ready"
        except Exception:  # the first rgba request compiles it then (and says what fails, if it does)
            logger.exception("pymatting's warm-up failed")
            self.effects = "failed"

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPIOffline(  # /docs and /redoc from files the package ships: they render offline
            title="bgserve: background removal",
            version=version("bgserve"),
            description="InSPyReNet (transparent-background) on Ray Serve. Send an image, get the cut-out, its mask "
            "or an effect. Three quality tiers: fast (384 px), balanced (1024 px), quality (the photo's own size).",
        )
        install_error_handlers(app)
        add_middleware(app, self.config)
        app.add_api_route("/", self.root, include_in_schema=False)
        app.add_api_route("/healthz", self.healthz, summary="Liveness: answers while the service is up")
        app.add_api_route(
            "/readyz",
            self.readyz,
            summary="Readiness: 200 once every tier has a running replica, else 503",
            responses=READY_RESPONSES,
        )
        app.add_api_route(
            "/v1/tiers",
            self.list_tiers,
            response_model=list[TierInfo],
            summary="The served tiers and whether each is ready",
        )
        # Uptime checkers probe with HEAD, which FastAPI answers 405 on a GET route (Starlette's own routes take it).
        probes = {"/": self.root, "/healthz": self.healthz, "/readyz": self.readyz, "/v1/tiers": self.list_tiers}
        for path, probe in probes.items():
            app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)
        app.add_api_route(
            "/v1/remove",
            self.remove,
            methods=["POST"],
            summary="Remove the background of an image",
            openapi_extra=REMOVE_REQUEST_BODY,
            responses=REMOVE_RESPONSES,
            response_class=Response,
        )
        app.add_api_route(
            "/api/remove",
            self.rembg_remove,
            methods=["POST"],
            summary="rembg's API: multipart field `file`, rembg's options (model, a, af, ab, ae, om, ppm, bgc, extras)",
            openapi_extra=REMBG_REQUEST,
            responses=REMOVE_RESPONSES,
            response_class=Response,
        )
        app.add_api_route(
            "/api/remove",
            self.rembg_remove_url,
            methods=["GET"],
            summary="rembg's URL form: refused (422), this service does not fetch URLs",
            response_class=Response,
            status_code=422,  # its only answer, so the spec shows no 200
            response_description="Always: {error: {code: invalid_parameter, message}}.",
        )
        return app

    # --- routes -------------------------------------------------------------------------------------------------
    async def root(self) -> HTMLResponse:
        """The web page (deployments/web/index.html): upload, choose, compare, download; it calls the API."""
        return HTMLResponse(WEB_PAGE)

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        tiers = self.tier_infos()
        ready = self.readiness.all_ready(tiers) and self.effects != "warming_up"
        body = {
            "ready": ready,
            "tiers": {t.tier.value: t.status for t in tiers},
            # What each tier not ready yet is doing, from its replica's own report (Serve's status only says
            # UPDATING through a whole download).
            "startup": {t.tier.value: t.startup.model_dump() for t in tiers if not t.ready and t.startup},
            "effects": self.effects,
        }
        return JSONResponse(status_code=200 if ready else 503, content=body)

    async def list_tiers(self) -> list[TierInfo]:
        return self.tier_infos()

    async def remove(self, request: Request, params: Annotated[RemoveParams, Query()]) -> Response:
        # A tier that cannot serve is refused before the upload is read, unless a multipart body may still name
        # another one in its fields (a field wins over the query's): then once it is read.
        if not is_multipart(request):
            self.readiness.raise_if_unavailable(self.served_tier(params.tier or self.config.default_tier))
        with self.admission.slot():
            upload = await read_and_record(request)
            if upload.other_files:  # a misspelt `backgroud`, or an option sent as a file: never dropped silently
                names = listed([repr(name) for name in upload.other_files])
                raise InvalidParameterError(
                    f"unknown file field(s) {names}: the image goes as 'image' (or 'file'), a background as "
                    f"'background', and options as text fields"
                )
            if upload.fields:  # options sent as multipart text fields too
                params = options_from(RemoveParams, sent_options(request, upload))
            tier = self.served_tier(params.tier or self.config.default_tier)
            self.readiness.raise_if_unavailable(tier)
            return await self.render(request, tier, params, upload)

    async def rembg_remove(self, request: Request) -> Response:
        """rembg's ``POST /api/remove`` (serve_app/rembg_api.py): its options as form fields or query parameters."""
        with self.admission.slot():
            upload = await read_and_record(request)
            request.state.rembg_options = sent_options(request, upload)  # for the metrics, if refused
            params = options_from(RembgParams, request.state.rembg_options).to_remove_params()
            tier = self.served_tier(params.tier or self.config.default_tier)
            self.readiness.raise_if_unavailable(tier)
            return await self.render(request, tier, params, upload)

    async def rembg_remove_url(self) -> Response:
        raise InvalidParameterError(
            "this service does not fetch URLs (it never reaches out to the network): POST the image to /api/remove "
            "as multipart field 'file'"
        )

    async def render(self, request: Request, tier: ServedTier, params: RemoveParams, upload: Upload) -> Response:
        """Decode, run the tier's model, apply the effects and encode: one image request, once admitted."""
        request.state.labels = request_labels(tier.tier.value, params)  # for RecordRequests, whatever the answer
        caller = getattr(request.state, "caller", "")  # set by the API-key check, when keys are on
        # Hashing a 32 MB upload takes ~20 ms: on the pool, not the event loop every request shares.
        content = await self.on_cpu(content_hash, upload.image)
        key = MaskKey(content, tier.tier.value, tier.config.runtime, tier.weights_identity(), caller)
        tag = await self.on_cpu(etag, key, params, upload.background, self.served_as[tier.tier])
        if matches(request.headers.get("if-none-match"), tag):  # the client has these bytes: nothing to do
            return Response(status_code=304, headers={"ETag": tag})
        pixels = self.config.max_image_pixels
        # The pixel budget is taken from the headers' sizes before anything is decoded: a request over it costs
        # no decode, and no image is held uncounted while another decodes. (On the pool too: a header can be slow
        # to read, 30 MB of PNG chunks before the pixels took 90 ms, and the event loop must not wait for it.)
        declared = await self.on_cpu(pixels_to_hold, upload.image, upload.background, params, pixels)
        with self.admission.holding(declared):
            background, background_profile = await self.on_cpu(decode_background, upload.background, params, pixels)
            prepared = await self.on_cpu(preprocess, upload.image, tier.resize, tier.base_size, pixels)
            check_outputs_fit(prepared, params)
            called = time.perf_counter()
            # Cache-Control from the client: no-cache runs the model; no-store also keeps nothing.
            directives = request.headers.get("cache-control", "").lower()
            cached = None if "no-cache" in directives or "no-store" in directives else self.mask_cache.get(key)
            if cached is not None:  # no model call: batch size 0 and no model time say so
                result = MaskResult(mask=cached.mask, batch_size=0, model_seconds=0.0, runtime=cached.runtime)
            else:
                result = await self.models[tier.tier].predict(prepared.model_input)
                if "no-store" not in directives:
                    self.mask_cache.put(key, result)
            round_trip = time.perf_counter() - called
            rendered = await self.on_cpu(
                postprocess,
                prepared.image,
                result.mask,
                params,
                background,
                prepared.icc_profile,
                background_profile,
                prepared.alpha,
            )
        steps = step_seconds(prepared, result, round_trip, rendered)
        headers = result_headers(tier.tier.value, tier.weights_label, prepared, result, rendered, steps)
        headers.update({"ETag": tag, "X-Cache": "miss" if cached is None else "hit"})
        if params.outputs is not None:
            headers["Content-Disposition"] = 'attachment; filename="outputs.zip"'
        # For RecordRequests (deployments/metrics.py): the metrics and the access line.
        request.state.step_seconds = steps
        request.state.megapixels = prepared.image.shape[0] * prepared.image.shape[1] / 1e6
        request.state.served.update(
            input=f"{prepared.image.shape[1]}x{prepared.image.shape[0]}",
            model_input=headers["X-Model-Input"],
            batch_size=result.batch_size,
        )
        return Response(content=rendered.body, media_type=rendered.media_type, headers=headers)

    # --- helpers ------------------------------------------------------------------------------------------------
    def served_tier(self, tier: Tier) -> ServedTier:
        if tier not in self.tiers:
            served = ", ".join(t.value for t in self.tiers)
            raise InvalidParameterError(f"tier {tier.value!r} is not served here; served tiers: {served}")
        return self.tiers[tier]

    def tier_infos(self) -> list[TierInfo]:
        return [
            self.readiness.tier_info(served).model_copy(update={"default": tier == self.config.default_tier})
            for tier, served in self.tiers.items()
        ]

    async def on_cpu(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await to_the_end(self.cpu_pool, work, *args, **kwargs)

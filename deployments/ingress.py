"""The HTTP ingress: FastAPI inside a Serve deployment holding one handle per tier.

It reads and validates the request, calls ``serve_app.pipeline.prepare`` (decode, upright, resize), sends the
model-sized image to the tier, and calls ``serve_app.pipeline.render`` (upsample, effect, encode) on the mask.
CPU work runs in threads so the replica keeps accepting requests, and concurrent requests reach the tier
together, where they are batched.
"""

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from deployments import SERVE_LOGGER, route_core_logs_to_serve
from serve_app.effects import warm_up_matting
from serve_app.errors import (
    InvalidParameterError,
    MalformedRequestError,
    PayloadTooLargeError,
    ServiceError,
    TierUnavailableError,
    UnsupportedMediaTypeError,
)
from serve_app.pipeline import Prepared, Rendered, prepare, render
from serve_app.schemas import (
    AppConfig,
    ErrorBody,
    MaskResult,
    RemoveParams,
    TierInfo,
    TierModelArgs,
    gpu_missing_message,
)
from serve_app.tiers import Tier

logger = logging.getLogger(SERVE_LOGGER)

UPLOAD_FIELDS = ("image", "file")  # "file" is what rembg's clients send
# Any other body is taken as the image's bytes (curl --data-binary sends x-www-form-urlencoded by default).
NOT_IMAGE_TYPES = ("application/json", "text/", "application/xml")
STATUS_TTL_S = 1.0
STATUS_TIMEOUT_S = 3.0
RETRY_AFTER_S = "5"

app = FastAPI(
    title="bgserve: background removal",
    version="0.1.0",
    description="InSPyReNet (transparent-background) on Ray Serve. Send an image, get the cut-out, its mask or "
    "an effect. Three quality tiers: fast (384 px), balanced (1024 px), quality (the photo's own size).",
)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


@app.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("%s: %s", exc.code, exc.message)
    headers = {"Retry-After": RETRY_AFTER_S} if exc.status == 503 else None
    return error_response(exc.status, exc.code, exc.message, headers)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'query')}: {e.get('msg', '')}" for e in exc.errors()
    )
    return error_response(InvalidParameterError.status, InvalidParameterError.code, problems)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405: same JSON shape
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving a request")
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the ingress log")


_REMOVE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
_REMOVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The result image; X-Tier, X-Weights and X-Batch-Size say how it was made.",
        "content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}},
    },
    400: {"model": ErrorBody, "description": "Empty upload, undecodable image or malformed multipart body."},
    413: {"model": ErrorBody, "description": "Upload or image too large."},
    415: {"model": ErrorBody, "description": "A JSON or text body."},
    422: {"model": ErrorBody, "description": "Invalid query parameter, or no 'image' field."},
    503: {"model": ErrorBody, "description": "The tier is not running, cannot be scheduled, or is overloaded."},
}


class TierBoard:
    """Which tier deployments have a running replica (``serve.status()``) and whether the cluster has a GPU,
    fetched off the event loop at most once a second. If the controller does not answer, the last known state
    stands; with none known, requests are let through rather than refused."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._fetched_at = float("-inf")
        self._deployments: dict[str, Any] | None = None
        self._cluster_gpus = 0.0

    @staticmethod
    def _fetch() -> tuple[dict[str, Any], float]:
        application = serve.status().applications.get(serve.get_replica_context().app_name)
        return (dict(application.deployments) if application else {}), float(ray.cluster_resources().get("GPU", 0.0))

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < STATUS_TTL_S:
                return
            try:
                self._deployments, self._cluster_gpus = await asyncio.wait_for(
                    asyncio.to_thread(self._fetch), STATUS_TIMEOUT_S
                )
            except Exception:
                logger.warning("could not read Serve's status; keeping the last known tier states", exc_info=True)
            self._fetched_at = time.monotonic()

    async def tier_info(self, args: TierModelArgs) -> TierInfo:
        await self.refresh()
        config, name = args.config, args.tier.value
        if self._deployments is None:
            running, status, message = None, "UNKNOWN", "Serve's status could not be read"
        elif (deployment := self._deployments.get(name)) is None:
            running, status, message = 0, "NOT_DEPLOYED", "no such deployment in this application"
        else:
            running = sum(n for state, n in deployment.replica_states.items() if _value(state) == "RUNNING")
            status, message = _value(deployment.status), deployment.message
        if running == 0 and config.num_gpus > 0 and self._cluster_gpus == 0:
            message = f"{gpu_missing_message({name: config.num_gpus})} {message}".strip()
        return TierInfo(
            tier=args.tier,
            checkpoint=args.spec.checkpoint.filename,
            weights=args.weights_label,
            input_size=args.input_size,
            runtime=config.runtime,
            device=config.resolved_device,
            ready=running != 0,  # unknown (None) counts as ready: never refuse for want of a status
            status=status,
            message=message,
        )


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes: multipart field ``image`` (or rembg's ``file``), or the raw body; at most ``limit``."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(NOT_IMAGE_TYPES):
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r}: send multipart/form-data with field 'image', or the image bytes as the "
            f"body (image/*, application/octet-stream, or curl's default for --data-binary)"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"upload is {declared} bytes; this service takes at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"upload exceeds {limit} bytes")
    if content_type.startswith("multipart/form-data"):
        return await _multipart_image(request, bytes(body), limit)
    return bytes(body)


async def _multipart_image(request: Request, body: bytes, limit: int) -> bytes:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=4, max_fields=32, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedRequestError(f"malformed multipart body: {exc.message}") from None
    try:
        for name in UPLOAD_FIELDS:
            upload = form.get(name)
            if isinstance(upload, UploadFile):
                return await upload.read()
        fields = ", ".join(sorted(form.keys())) or "none"
        raise InvalidParameterError(f"multipart body has no file field 'image' (fields sent: {fields})")
    finally:
        await form.close()


# Everything the class uses must be defined above it: @serve.ingress captures the module's names at decoration.
@serve.deployment(name="ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, config: AppConfig, tiers: dict[str, DeploymentHandle]) -> None:
        route_core_logs_to_serve()
        assert config.weights_dir is not None, "the builder resolves weights_dir"
        self.config = config
        self.tier_args = config.tier_args(config.weights_dir)
        self.handles = tiers
        self.board = TierBoard()
        # pymatting (rgba) loads or compiles its numba kernels on first use: do it now, not in a request.
        threading.Thread(target=warm_up_matting, name="warm-up-matting", daemon=True).start()

    # --- routes -------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root(self, request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/docs")

    @app.get("/healthz", summary="Liveness: answers while the service is up")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once every tier has a running replica, else 503")
    async def readyz(self) -> JSONResponse:
        tiers = await self.tier_infos()
        ready = all(t.ready for t in tiers)
        body = {"ready": ready, "tiers": {t.tier.value: t.status for t in tiers}}
        return JSONResponse(status_code=200 if ready else 503, content=body)

    @app.get("/v1/tiers", response_model=list[TierInfo], summary="The served tiers and whether each is ready")
    async def list_tiers(self) -> list[TierInfo]:
        return await self.tier_infos()

    @app.post(
        "/v1/remove",
        summary="Remove the background of an image",
        openapi_extra=_REMOVE_BODY,
        responses=_REMOVE_RESPONSES,
        response_class=Response,
    )
    async def remove(self, request: Request, params: Annotated[RemoveParams, Query()]) -> Response:
        tier = params.tier or self.config.default_tier
        args = self.tier_args.get(tier)
        if args is None:
            served = ", ".join(t.value for t in self.tier_args)
            raise InvalidParameterError(f"tier {tier.value!r} is not served here; served tiers: {served}")
        info = await self.board.tier_info(args)
        if not info.ready:
            raise TierUnavailableError(f"the {tier.value} tier is not ready ({info.status}): {info.message}")
        data = await read_upload(request, self.config.max_upload_bytes)
        prepared: Prepared = await asyncio.to_thread(
            prepare, data, args.spec.resize, args.base_size, self.config.max_image_pixels
        )
        called = time.perf_counter()
        result = await self.call_tier(tier, prepared)
        round_trip = time.perf_counter() - called
        rendered: Rendered = await asyncio.to_thread(render, prepared.image, result.mask, params)
        steps = {
            **prepared.timings,
            "queue": max(0.0, round_trip - result.model_seconds),  # batching wait, transfer, replica hand-off
            "model": result.model_seconds,
            **rendered.timings,
        }
        headers = {
            "X-Tier": tier.value,
            "X-Weights": result.weights,
            "X-Batch-Size": str(result.batch_size),
            "X-Model-Input": f"{prepared.model_input.shape[1]}x{prepared.model_input.shape[0]}",
            "Server-Timing": ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in steps.items()),
        }
        return Response(content=rendered.body, media_type=rendered.media_type, headers=headers)

    # --- helpers ------------------------------------------------------------------------------------------------
    async def call_tier(self, tier: Tier, prepared: Prepared) -> MaskResult:
        handle = self.handles[tier.value]
        for attempt in (1, 2):  # a replica that dies mid-request loses nothing: the request goes to another once
            try:
                return await handle.predict.remote(prepared.model_input)
            except RayTaskError as exc:
                if isinstance(exc.cause, ServiceError):
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                logger.warning("tier %s replica died during a request (attempt %d): %s", tier.value, attempt, exc)
            except BackPressureError as exc:
                raise TierUnavailableError(f"the {tier.value} tier is at capacity; retry shortly ({exc})") from exc
            except DeploymentUnavailableError as exc:
                raise TierUnavailableError(f"the {tier.value} tier is unavailable: {exc}") from exc
        raise TierUnavailableError(f"the {tier.value} tier's replica died twice while serving this request")

    async def tier_infos(self) -> list[TierInfo]:
        return [await self.board.tier_info(args) for args in self.tier_args.values()]

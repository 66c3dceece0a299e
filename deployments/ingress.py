"""The HTTP ingress: FastAPI inside a Serve deployment holding one handle per tier.

It reads and validates the request, calls ``serve_app.pipeline.prepare`` (decode, upright, resize), sends the
model-sized image to the tier, and calls ``serve_app.pipeline.render`` (upsample, effect, encode) on the mask.
CPU work runs in threads so the replica keeps accepting requests, and concurrent requests reach the tier
together, where they are batched.
"""

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import ray
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serve_app.errors import (
    InvalidParameterError,
    PayloadTooLargeError,
    ServiceError,
    TierUnavailableError,
    UnsupportedMediaTypeError,
)
from serve_app.pipeline import Prepared, Rendered, prepare, render
from serve_app.schemas import AppConfig, ErrorBody, MaskResult, RemoveParams, TierInfo
from serve_app.tiers import CATALOGUE, DynamicResize, Tier

logger = logging.getLogger("ray.serve")

UPLOAD_FIELDS = ("image", "file")  # "file" is what rembg's clients send
# Any other body is taken as the image's bytes (curl --data-binary sends x-www-form-urlencoded by default).
NOT_IMAGE_TYPES = ("application/json", "text/", "application/xml")
STATUS_TTL_S = 1.0
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
    400: {"model": ErrorBody, "description": "Empty upload or undecodable image."},
    413: {"model": ErrorBody, "description": "Upload or image too large."},
    415: {"model": ErrorBody, "description": "Body is neither multipart nor an image."},
    422: {"model": ErrorBody, "description": "Invalid query parameter."},
    503: {"model": ErrorBody, "description": "The tier is not running yet or cannot be scheduled."},
}


class TierBoard:
    """Which tier deployments have a running replica, from ``serve.status()``, cached for a second."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._fetched_at = 0.0
        self._deployments: dict[str, Any] = {}

    async def deployments(self) -> dict[str, Any]:
        async with self._lock:
            if time.monotonic() - self._fetched_at > STATUS_TTL_S:
                status = await asyncio.to_thread(serve.status)
                app_name = serve.get_replica_context().app_name
                application = status.applications.get(app_name)
                self._deployments = dict(application.deployments) if application else {}
                self._fetched_at = time.monotonic()
        return self._deployments


def _running_replicas(deployment: Any) -> int:
    return sum(n for state, n in deployment.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")


def _cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes: multipart field ``image`` (or rembg's ``file``), or the raw body; at most ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"upload is {declared} bytes; this service takes at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"upload exceeds {limit} bytes")
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        return await _multipart_image(request, bytes(body), limit)
    if content_type.startswith(NOT_IMAGE_TYPES):
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r}: send multipart/form-data with field 'image', or the image bytes as the "
            f"body (image/*, application/octet-stream, or curl's default for --data-binary)"
        )
    return bytes(body)


async def _multipart_image(request: Request, body: bytes, limit: int) -> bytes:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, replay(), max_files=4, max_fields=32, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidParameterError(f"malformed multipart body: {exc.message}") from None
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
        self.config = config
        self.tiers = tiers
        self.board = TierBoard()
        self._weights: dict[str, str] = {}

    # --- routes -------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root(self) -> RedirectResponse:
        return RedirectResponse("/docs")

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
        if tier.value not in self.tiers:
            served = ", ".join(self.tiers)
            raise InvalidParameterError(f"tier {tier.value!r} is not served here; served tiers: {served}")
        await self.ensure_ready(tier)
        data = await read_upload(request, self.config.max_upload_bytes)
        spec, base_size = CATALOGUE[tier], self.base_size(tier)
        prepared: Prepared = await asyncio.to_thread(
            prepare, data, spec.resize, base_size, self.config.max_image_pixels
        )
        result = await self.call_tier(tier, prepared)
        rendered: Rendered = await asyncio.to_thread(render, prepared.image, result.mask, params)
        headers = {
            "X-Tier": tier.value,
            "X-Weights": result.weights,
            "X-Batch-Size": str(result.batch_size),
            "X-Model-Input": f"{prepared.model_input.shape[1]}x{prepared.model_input.shape[0]}",
        }
        return Response(content=rendered.body, media_type=rendered.media_type, headers=headers)

    # --- helpers ------------------------------------------------------------------------------------------------
    def base_size(self, tier: Tier) -> int:
        return self.config.tiers[tier].base_size or CATALOGUE[tier].base_size

    async def call_tier(self, tier: Tier, prepared: Prepared) -> MaskResult:
        handle = self.tiers[tier.value]
        for attempt in (1, 2):  # a replica that dies mid-request loses nothing: the request goes to another once
            try:
                return await handle.predict.remote(prepared.model_input)
            except RayTaskError as exc:
                cause = exc.cause if isinstance(exc.cause, ServiceError) else None
                if cause is None:
                    raise
                raise cause from None
            except RayActorError as exc:
                logger.warning("tier %s replica died during a request (attempt %d): %s", tier.value, attempt, exc)
        raise TierUnavailableError(f"the {tier.value} tier's replica died twice while serving this request")

    async def ensure_ready(self, tier: Tier) -> None:
        info = await self.tier_info(tier)
        if not info.ready:
            raise TierUnavailableError(f"the {tier.value} tier is not ready ({info.status}): {info.message}")

    async def tier_infos(self) -> list[TierInfo]:
        return [await self.tier_info(Tier(name)) for name in self.tiers]

    async def tier_info(self, tier: Tier) -> TierInfo:
        config, spec = self.config.tiers[tier], CATALOGUE[tier]
        deployment = (await self.board.deployments()).get(tier.value)
        running = _running_replicas(deployment) if deployment else 0
        status = str(getattr(deployment.status, "value", deployment.status)) if deployment else "NOT_DEPLOYED"
        message = deployment.message if deployment else "no such deployment in this application"
        if not running and config.num_gpus > 0 and _cluster_gpus() == 0:
            message = (
                f"this tier asks for num_gpus={config.num_gpus} but the Ray cluster has no GPU, so its replicas "
                f"cannot be scheduled and would wait forever. Serve a CPU config (configs/cpu.yaml) or add a GPU "
                f"node. {message}"
            ).strip()
        if running and tier.value not in self._weights:
            self._weights[tier.value] = await self.tiers[tier.value].weights.remote()
        size = self.base_size(tier)
        resize = spec.resize
        input_size = (
            f"dynamic (shorter side <= {resize.max_short_side}, multiples of {resize.multiple})"
            if isinstance(resize, DynamicResize)
            else f"{size}x{size}"
        )
        return TierInfo(
            tier=tier,
            checkpoint=spec.checkpoint.filename,
            weights=self._weights.get(tier.value),
            input_size=input_size,
            runtime=config.runtime,
            device="cuda" if config.wants_gpu else "cpu",
            ready=running > 0,
            status=status,
            message=message,
        )

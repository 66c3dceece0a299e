"""What ``/docs`` and ``/openapi.json`` say beyond what FastAPI infers: the upload reaches ``POST /v1/remove`` as a
raw ``Request`` (multipart or body), so its schema, its response headers and the error answers are spelled out
here, as the README documents them (an integration test compares the two)."""

from typing import Any

from pydantic import BaseModel

from serve_app.rembg_api import RembgParams
from serve_app.schemas import ErrorBody


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def _multipart(fields: dict[str, str], description: str) -> dict[str, Any]:
    """A multipart/form-data body of binary ``fields`` (name: what it is)."""
    properties = {name: _binary(what) for name, what in fields.items()}
    return {"schema": {"type": "object", "properties": properties, "description": description}}


REMOVE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": _multipart(
                {
                    "image": "The image.",
                    "file": "The same, as rembg sends it.",
                    "background": "For effect=background: the image to put the subject on.",
                },
                "One of `image` or `file`; `background` with effect=background.",
            ),
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


REMOVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The result image, at the width and height of the upright upload (with crop=true, of the "
        "subject's box plus crop_margin); with `outputs`, a ZIP of one image per output, named <effect>.<ext>.",
        "content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}, "application/zip": {}},
        "headers": {
            "X-Tier": _header("The tier that made it."),
            "X-Weights": _header("The checkpoint that made it, or `untrained`."),
            "X-Batch-Size": _header("How many images shared its model call."),
            "X-Runtime": _header("The runtime that made the mask (eager, openvino, onnx, ...; what auto chose)."),
            "X-Model-Input": _header("The size the model saw, WIDTHxHEIGHT."),
            "X-Cache": _header("hit: the mask came from the ingress's cache (no model call); miss: the model ran."),
            "ETag": _header("Names these bytes: send it back as If-None-Match to get 304 with no body."),
            "X-Foreground-Top": _header("The subject's box in the upright upload: its top row (0 with no subject)."),
            "X-Foreground-Left": _header("The subject's leftmost column (0 with no subject)."),
            "X-Foreground-Width": _header("The subject's width in pixels; 0: no subject was found."),
            "X-Foreground-Height": _header("The subject's height in pixels; 0: no subject was found."),
            "Server-Timing": _header(
                "Milliseconds per step: decode, resize, queue, model, upsample, effect, encode "
                "(e.g. `model;dur=1234.5`)."
            ),
        },
    },
    304: {
        "description": "If-None-Match named this answer's ETag: the client holds these bytes already; no body.",
        "headers": {"ETag": _header("The answer's ETag, as If-None-Match named it.")},
    },
    400: {"model": ErrorBody, "description": "Empty upload, undecodable image or malformed multipart body."},
    401: {"model": ErrorBody, "description": "API keys are on and the request carries none, or a wrong one."},
    408: {
        "model": ErrorBody,
        "description": "The upload paused too long or arrived too slowly (upload_too_slow), or the request outlived "
        "the server's request timeout (request_timeout).",
    },
    413: {"model": ErrorBody, "description": "Upload or image too large."},
    415: {"model": ErrorBody, "description": "A JSON, XML or text body."},
    422: {"model": ErrorBody, "description": "Invalid query parameter, or no 'image' field."},
    503: {
        "model": ErrorBody,
        "description": "The tier is not running, cannot be scheduled, or holds all it can (tier_unavailable); the "
        "ingress has all the image requests it admits (overloaded); or the ingress replica holding the request "
        "died (ingress_unavailable). Retry after Retry-After.",
        "headers": {"Retry-After": _header("Seconds to wait before retrying.")},
    },
    504: {
        "model": ErrorBody,
        "description": "The request waited and ran longer than its tier's deadline (deadline_exceeded); retry after "
        "Retry-After, or use a faster tier.",
        "headers": {"Retry-After": _header("Seconds to wait before retrying.")},
    },
    500: {"model": ErrorBody, "description": "The model failed on this image, or an unexpected error (logged)."},
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Every tier has a serving replica and rgba's kernels are compiled: "
        "{ready: true, tiers: {name: status}, startup: {}, effects: ready}."
    },
    503: {
        "description": "A tier has none yet (or its state is not known yet), or the kernels are still compiling "
        "(effects: warming_up): {ready: false, tiers: {name: status}, startup: {name: the start-up report of each "
        "tier not ready, as in /v1/tiers}, effects: warming_up | ready | failed}."
    },
}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A pydantic model's fields as OpenAPI query parameters: for a route that reads them itself."""
    properties = model.model_json_schema()["properties"]
    return [
        {"name": name, "in": "query", "required": False, "description": field.get("description", ""), "schema": field}
        for name, field in properties.items()
    ]


REMBG_REQUEST: dict[str, Any] = {
    "parameters": query_parameters(RembgParams),  # or as multipart text fields, under the same names
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": _multipart(
                {"file": "The image."},
                "rembg's field `file` (`image` is taken too); the options may come as fields.",
            )
        },
    },
}

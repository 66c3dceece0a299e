"""What ``/docs`` and ``/openapi.json`` say about ``POST /v1/remove`` beyond what FastAPI infers: the upload
reaches the route as a raw ``Request`` (multipart or body), so its schema and the error answers are spelled out
here."""

from typing import Any

from serve_app.schemas import ErrorBody

REMOVE_REQUEST_BODY: dict[str, Any] = {
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
REMOVE_RESPONSES: dict[int | str, dict[str, Any]] = {
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

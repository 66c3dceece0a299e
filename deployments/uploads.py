"""Reading the image a request carries: multipart field ``image`` (or rembg's ``file``), parsed by Starlette's
own form parser with its part and file limits, or the raw body. Bodies over the limit are refused by
``BodySizeLimit`` before they are read: at once when the client declares the length, else as soon as the
stream passes it."""

from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http_errors import service_error_response
from serve_app.errors import (
    InvalidParameterError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

UPLOAD_FIELDS = ("image", "file")  # "file" is what rembg's clients send
# Any other body is taken as the image's bytes (curl --data-binary sends x-www-form-urlencoded by default).
NOT_IMAGE_TYPES = ("application/json", "text/", "application/xml")
MAX_FILES = 4  # the image, and room for what a later feature sends beside it (a background image, say)
MAX_FIELDS = 32


class BodySizeLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets our JSON 413 and is not read further.

    A declared ``Content-Length`` over the limit is answered before the app runs; an undeclared (chunked) body
    raises ``PayloadTooLargeError`` from ``receive`` the moment it passes the limit, inside the route that reads
    it, where the app's error handler answers it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            too_large = PayloadTooLargeError(f"upload is {declared} bytes; this service takes at most {self.limit}")
            await service_error_response(too_large)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLargeError(f"upload exceeds {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


async def read_upload(request: Request, max_field_bytes: int) -> bytes:
    """The image bytes: multipart field ``image`` (or ``file``), or the raw body. The body as a whole is bounded
    by ``BodySizeLimit``; ``max_field_bytes`` bounds each non-file multipart field (Starlette's ``max_part_size``,
    which does not apply to files)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(NOT_IMAGE_TYPES):
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r}: send multipart/form-data with field 'image', or the image bytes as the "
            f"body (image/*, application/octet-stream, or curl's default for --data-binary)"
        )
    if content_type.startswith("multipart/form-data"):
        return await _multipart_image(request, max_field_bytes)
    return await request.body()


async def _multipart_image(request: Request, max_field_bytes: int) -> bytes:
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=max_field_bytes)
    except HTTPException as exc:  # Starlette's answer to a malformed body; ours has our JSON shape and code
        raise MalformedRequestError(f"malformed multipart body: {exc.detail}") from None
    try:
        for name in UPLOAD_FIELDS:
            upload = form.get(name)
            if isinstance(upload, UploadFile):
                return await upload.read()
        fields = ", ".join(sorted(form.keys())) or "none"
        raise InvalidParameterError(f"multipart body has no file field 'image' (fields sent: {fields})")
    finally:
        await form.close()

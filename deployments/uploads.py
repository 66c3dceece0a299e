"""Reading the image a request carries: multipart field ``image`` (or rembg's ``file``), parsed by Starlette's
own form parser with its part and file limits, or the raw body. ``UploadLimits`` guards every body on its way in:
one over the size limit is refused before it is read (at once when the client declares the length, else as soon as
the stream passes it), and one that stalls or crawls is cut off with a 408, so a slow client cannot hold one of
the ingress's request slots for long."""

import asyncio
import time
from dataclasses import dataclass, field

from ray.exceptions import RayActorError, TaskCancelledError
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments.http_errors import service_error_response
from serve_app.errors import (
    ClientClosedError,
    InvalidParameterError,
    MalformedRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UploadTooSlowError,
)

UPLOAD_FIELDS = ("image", "file")  # "file" is what rembg's clients send
BACKGROUND_FIELD = "background"
# Any other body is taken as the image's bytes (curl --data-binary sends x-www-form-urlencoded by default).
NOT_IMAGE_TYPES = ("application/json", "text/", "application/xml")
MAX_FILES = 4  # the image, and room for what a later feature sends beside it (a background image, say)
MAX_FIELDS = 32
# Each text field (an option: rembg's and remove.bg's clients send them as form fields). Options are short; up to
# the upload limit, 30 MB of rembg `extras` were parsed on the event loop for seconds, every route waiting.
MAX_TEXT_FIELD_BYTES = 64 * 1024


class UploadLimits:
    """ASGI middleware over each request body: at most ``max_bytes``; no pause longer than ``stall_s`` between
    two parts; and, once ``stall_s`` has passed, at least ``min_bytes_per_s`` on average.

    A declared ``Content-Length`` over the size limit is answered (our JSON 413) before the app runs. The other
    limits raise from ``receive``, inside the route that reads the body, where the app's error handler answers
    them (413, or 408 for a slow upload). Once the body is complete, ``receive`` passes through untouched."""

    def __init__(self, app: ASGIApp, max_bytes: int, stall_s: float, min_bytes_per_s: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.stall_s = stall_s
        self.min_bytes_per_s = min_bytes_per_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            too_large = PayloadTooLargeError(f"upload is {declared} bytes; this service takes at most {self.max_bytes}")
            await service_error_response(too_large)(scope, receive, send)
            return
        started = time.monotonic()
        received = 0
        complete = False

        async def limited() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.stall_s)
            except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11, two before
                raise UploadTooSlowError(
                    f"the upload paused for more than {self.stall_s:g} s after {received} bytes"
                ) from None
            except TaskCancelledError:  # Serve's proxy cancelled the request: its client left
                message = {"type": "http.disconnect"}
            except RayActorError:  # the proxy holding the client died or cannot be reached: the client is cut off
                message = {"type": "http.disconnect"}
            if message["type"] == "http.disconnect":
                raise ClientClosedError(f"the client left after {received} bytes of its upload")
            if message["type"] != "http.request":
                return message
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received > self.max_bytes:
                raise PayloadTooLargeError(f"upload exceeds {self.max_bytes} bytes")
            elapsed = time.monotonic() - started
            if not complete and elapsed > self.stall_s and received / elapsed < self.min_bytes_per_s:
                raise UploadTooSlowError(
                    f"the upload arrives at {received / elapsed:.0f} bytes/s; this service needs at least "
                    f"{self.min_bytes_per_s} bytes/s"
                )
            return message

        await self.app(scope, limited, send)


@dataclass(frozen=True)
class Upload:
    image: bytes
    background: bytes | None = None  # multipart field `background`, for effect=background
    fields: dict[str, str] = field(default_factory=dict)  # the multipart body's text fields (rembg's options)
    other_files: list[str] = field(default_factory=list)  # names of file parts that are none of the above


async def read_upload(request: Request) -> Upload:
    """The image bytes: multipart field ``image`` (or ``file``), or the raw body; and a background image when the
    multipart body has field ``background``. The body as a whole is bounded by ``UploadLimits``;
    ``MAX_TEXT_FIELD_BYTES`` bounds each text field (Starlette's ``max_part_size``, which does not apply to
    files)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith(NOT_IMAGE_TYPES):
        raise UnsupportedMediaTypeError(
            f"content type {content_type!r}: send multipart/form-data with field 'image', or the image bytes as the "
            f"body (image/*, application/octet-stream, or curl's default for --data-binary)"
        )
    if is_multipart(request):
        return await _multipart_image(request)
    return Upload(await request.body())


def is_multipart(request: Request) -> bool:
    """Whether the body is multipart form data (whose text fields may carry options), not the raw image."""
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def listed(names: list[str], most: int = 10, longest: int = 40) -> str:
    """Field names for a message, bounded: 32 fields of 4 KB names made a 128 KB 422."""
    shown = [name if len(name) <= longest else name[: longest - 1] + "…" for name in sorted(names)[:most]]
    return ", ".join(shown) + (f" and {len(names) - most} more" if len(names) > most else "")


def sent_as_text(name: str) -> InvalidParameterError:
    """For a file sent as a text field: curl -F image=<photo.jpg (without the @), or a form that sent a name."""
    return InvalidParameterError(
        f"field {name!r} came as text, not as a file: send the file itself, as a file part with a filename "
        f"(curl -F {name}=@photo.jpg, with the @)"
    )


async def _multipart_image(request: Request) -> Upload:
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_TEXT_FIELD_BYTES)
    except HTTPException as exc:  # Starlette's answer to a malformed body; ours has our JSON shape and code
        if "exceeded maximum size" in str(exc.detail):
            raise PayloadTooLargeError(
                f"a text field of the multipart body is over {MAX_TEXT_FIELD_BYTES // 1024} KiB; an image goes as a "
                f"file part, with a filename (curl -F image=@photo.jpg)"
            ) from None
        raise MalformedRequestError(f"malformed multipart body: {exc.detail}") from None
    try:
        images = [part for name in UPLOAD_FIELDS for part in form.getlist(name)]
        if len(images) > 1 or len(form.getlist(BACKGROUND_FIELD)) > 1:  # which one was meant? Never guessed
            sent = listed([name for name, _ in form.multi_items() if name in (*UPLOAD_FIELDS, BACKGROUND_FIELD)], 4)
            raise InvalidParameterError(
                f"one image a request (and at most one background), not several parts (sent: {sent}): send each "
                f"image in its own request (bgserve-remove and the Python client's remove_many send many at once)"
            )
        background = form.get(BACKGROUND_FIELD)
        if isinstance(background, str):
            raise sent_as_text(BACKGROUND_FIELD)
        # A form's file input left empty still sends its part, with no bytes: no background was chosen.
        background_bytes = (await background.read() or None) if isinstance(background, UploadFile) else None
        for name in UPLOAD_FIELDS:
            upload = form.get(name)
            if isinstance(upload, UploadFile):
                texts = {key: value for key, value in form.multi_items() if isinstance(value, str)}
                known = (*UPLOAD_FIELDS, BACKGROUND_FIELD)
                others = sorted({k for k, v in form.multi_items() if isinstance(v, UploadFile) and k not in known})
                return Upload(await upload.read(), background_bytes, texts, others)
        as_text = [name for name in UPLOAD_FIELDS if isinstance(form.get(name), str)]
        if as_text:
            raise sent_as_text(as_text[0])
        # A part cut off before its closing boundary is not read at all, so "none" may mean a truncated body.
        fields = listed(list(form.keys())) or "none complete: is the closing boundary missing?"
        names = " or ".join(repr(name) for name in UPLOAD_FIELDS)
        raise InvalidParameterError(f"multipart body has no file field {names} (fields sent: {fields})")
    finally:
        await form.close()

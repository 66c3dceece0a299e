"""A typed Python client for the service, sync (``Client``) and async (``AsyncClient``), on httpx. It imports no
Ray and no torch, so scripts and other services can use it on their own.

    from serve_app.client import Client

    with Client("http://localhost:8000", api_key="...") as client:
        cutout = client.remove("photo.jpg", tier="fast").image()        # a PIL image (RGBA)
        on_white = client.remove(pil_image, effect="white", format="jpeg").content   # the bytes
        results = client.remove_many(paths, concurrency=8, effect="mask")

An image is a path, bytes, a PIL image or an HxWx3 (or HxW) uint8 NumPy array. Errors come back as
``RemoveError`` with the service's ``status``, ``code`` and ``message``. Answers that say "try again" (503 with
``Retry-After``: overloaded, a tier starting, a lost ingress, a service stopping; 504 deadline_exceeded; a reverse
proxy's 502) and refused, timed-out or dropped connections are retried up to ``retries`` times, waiting what
``Retry-After`` says (seconds or an HTTP date; else ``backoff_s``, doubling, at most 10 s), plus up to half as much
again (at least up to 0.1 s) at random, so that clients refused together do not come back together;
``stop_retrying()`` ends that. A connection is given up after 10 s, an answer after ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import math
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

import httpx
import numpy as np
from PIL import Image, ImageOps

ImageInput = Union[str, "os.PathLike[str]", bytes, Image.Image, np.ndarray]
RETRIED_STATUSES = frozenset({502, 503, 504})  # 502: a reverse proxy in front while the service restarts
DEFAULT_URL = "http://localhost:8000"


class RemoveError(Exception):
    """The service refused or failed a request (its JSON error body), or it could not be reached."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> RemoveError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:500] or response.reason_phrase
        return cls(response.status_code, code, message, retry_after(response))


@dataclass(frozen=True)
class Result:
    """One answer: the bytes and what the headers say about them."""

    content: bytes
    media_type: str
    headers: Mapping[str, str] = field(repr=False)
    attempts: int = 1  # requests sent for it (more than one after retries)

    def image(self) -> Image.Image:
        """The answer as a PIL image (not for a ZIP of several outputs)."""
        image = Image.open(io.BytesIO(self.content))
        image.load()
        return image

    @property
    def tier(self) -> str:
        return self.headers.get("x-tier", "")

    @property
    def runtime(self) -> str:
        return self.headers.get("x-runtime", "")

    @property
    def cached(self) -> bool:
        return self.headers.get("x-cache") == "hit"

    @property
    def foreground(self) -> tuple[int, int, int, int]:
        """The subject's box (top, left, width, height); all 0 when there is no subject."""
        sides = ("top", "left", "width", "height")
        return tuple(int(self.headers.get(f"x-foreground-{side}", 0)) for side in sides)  # type: ignore[return-value]


PNG_MODES = frozenset({"1", "L", "LA", "I;16", "P", "RGB", "RGBA"})  # the modes Pillow writes as PNG
MAX_RETRY_AFTER_S = 60.0  # a proxy's Retry-After of an hour should not stall a batch for that long
MAX_BACKOFF_S = 10.0  # the longest wait before jitter (15 s with it) for a service that does not answer: ~30 s restarts
STOP_CHECK_S = 0.1  # how soon an async wait between tries sees stop_retrying() (it may come from another thread)
RETRY_JITTER = 0.5  # each wait is stretched by up to this fraction at random: many refused at once spread out
MIN_JITTER_S = 0.2  # and by up to this much times RETRY_JITTER at least: Retry-After: 0 is "now" for every client
CONNECT_TIMEOUT_S = 10.0  # a host that takes no connection (firewalled, down): a try is given up after this


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the answer asks to wait, kept within 0..MAX_RETRY_AFTER_S; None when absent or neither form HTTP
    allows: seconds, or a date (a reverse proxy's ``Retry-After: Wed, 21 Oct 2026 07:28:00 GMT``)."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # the asctime form (Sun Nov  6 08:49:37 1994) names no zone: HTTP dates are GMT
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else None


def image_bytes(image: ImageInput) -> bytes:
    """What to upload: a file's bytes as they are; PIL images and arrays as PNG (lossless). A PIL image is turned
    upright by its EXIF orientation first (the PNG carries no EXIF), and one in a mode PNG cannot hold (CMYK,
    YCbCr, LAB, HSV) goes as RGB."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as handle:
            return handle.read()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise TypeError(
                f"a NumPy image is HxW or HxWx3 (or 4) uint8, not {image.dtype} of shape {image.shape}: convert it "
                "first (e.g. (array * 255).round().astype(np.uint8) for floats in 0..1)"
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if image.mode not in PNG_MODES:
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    raise TypeError(f"an image is a path, bytes, a PIL image or a NumPy array, not {type(image).__name__}")


def query_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def request_parts(image: ImageInput, background: ImageInput | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """httpx's arguments for one POST /v1/remove: query parameters (None left out, booleans as true/false, a list
    or tuple, as for ``outputs``, joined by commas) and the multipart upload."""
    params = {k: query_value(v) for k, v in options.items() if v is not None}
    files = {"image": ("image", image_bytes(image), "application/octet-stream")}
    if background is not None:
        files["background"] = ("background", image_bytes(background), "application/octet-stream")
    return {"params": params, "files": files}


def as_failure(exc: Exception) -> RemoveError:
    """One image's failure in ``remove_many``, returned in its place rather than raised: the service's answer as
    it is; an unreadable input; an HTTP-level failure (redirects, an undecodable answer)."""
    if isinstance(exc, RemoveError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return RemoveError(0, "http_error", f"{type(exc).__name__}: {exc}")
    return RemoveError(0, "unreadable", str(exc))  # a path that cannot be read, an object that is no image


# Transport errors another try may not meet: no connection, a timeout, a connection dropped mid-answer. The others
# (a URL without http://, a request httpx cannot send, a forward proxy's refusal such as its 407) fail the same way
# every time.
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def unreachable(exc: httpx.TransportError) -> RemoveError:
    code = "unreachable" if isinstance(exc, TRANSIENT) else "http_error"
    return RemoveError(0, code, f"{type(exc).__name__}: {exc}")


def checked_url(url: str) -> str:
    """The service's URL, refused at once if it is no http(s) URL (``localhost:8000`` failed every request)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"the service's URL {url!r} is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"the service's URL needs http:// or https:// and a host (got {url!r})")
    if "%" in parsed.host or (parsed.port is not None and not 0 < parsed.port < 65536):  # "a b"; port 0 or 99999
        raise ValueError(f"the service's URL {url!r} has no usable host and port")
    return url


FAILURES = (RemoveError, OSError, TypeError, ValueError, httpx.HTTPError)


def listed(response: httpx.Response) -> list[dict[str, Any]]:
    """A 200's JSON list (``/v1/tiers``); something else at that URL (a proxy's page) is a ``RemoveError``."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, list):
        raise RemoveError(response.status_code, "http_error", f"not a JSON list: {response.text[:200]!r}")
    return body


API_KEY_CHARACTERS = frozenset(map(chr, range(0x21, 0x7F)))  # printable ASCII, no space: what a header carries


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer header; a key a header cannot carry (non-ASCII, a space, a pasted line end) is refused here, not
    as a traceback from httpx or a failure of every request."""
    if not api_key:
        return {}
    if not set(api_key) <= API_KEY_CHARACTERS:
        raise ValueError("the API key has characters an HTTP header cannot carry (non-ASCII, spaces or line ends)")
    return {"Authorization": f"Bearer {api_key}"}


def http_options(url: str, api_key: str | None, timeout_s: float | None) -> dict[str, Any]:
    """What both clients give httpx: a connection is given up after CONNECT_TIMEOUT_S (a host that does not
    answer, then retried), an answer after ``timeout_s``; no cap on connections (httpx's 100 would hold back a
    ``remove_many`` or a CLI with more in flight: their concurrency is the cap)."""
    return {
        "base_url": checked_url(url),
        "headers": auth_headers(api_key),
        "timeout": httpx.Timeout(
            timeout_s, connect=CONNECT_TIMEOUT_S if timeout_s is None else min(CONNECT_TIMEOUT_S, timeout_s)
        ),
        "limits": httpx.Limits(max_connections=None, max_keepalive_connections=None),
    }


class _Retrying:
    """What both clients share: when to retry and how long to wait."""

    def __init__(self, retries: int, backoff_s: float) -> None:
        self.retries, self.backoff_s = retries, backoff_s
        self.no_more_retries = threading.Event()

    def stop_retrying(self) -> None:
        """Retry nothing from now on, and end the waits between tries: each call gives its last error (the CLI's
        Ctrl-C). Requests already sent still get their answers."""
        self.no_more_retries.set()

    def retriable(self, error: RemoveError, attempt: int) -> bool:
        """A "try again" answer (or no answer at all), with retries left."""
        if self.no_more_retries.is_set():
            return False
        return attempt <= self.retries and (error.status in RETRIED_STATUSES or error.code == "unreachable")

    def wait_s(self, attempt: int, error: RemoveError) -> float:
        """What ``Retry-After`` asks (never less), else the doubling backoff, stretched at random: the requests a
        full service refused in one burst would otherwise all come back in the same instant, and be refused again."""
        if error.retry_after is not None:
            base = error.retry_after
        else:
            base = min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        return base + max(base, MIN_JITTER_S) * RETRY_JITTER * random.random()

    @staticmethod
    def result(response: httpx.Response, attempt: int) -> Result:
        media_type = response.headers.get("content-type", "").split(";")[0]
        return Result(response.content, media_type, dict(response.headers), attempt)


class Client(_Retrying):
    """A sync client; safe to share between threads (``remove_many`` does)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout_s: float | None = 600.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(retries, backoff_s)
        self.http = httpx.Client(**http_options(url, api_key, timeout_s), transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **request: Any) -> tuple[httpx.Response, int]:
        """One call and its retries: the 200 and how many attempts it took, else raises ``RemoveError``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(method, path, **request)
            except httpx.TransportError as exc:
                error = unreachable(exc)
            else:
                if response.status_code == 200:
                    return response, attempt
                error = RemoveError.from_response(response)
            if not self.retriable(error, attempt):
                raise error
            if self.no_more_retries.wait(self.wait_s(attempt, error)):  # stop_retrying() during the wait
                raise error

    def tiers(self) -> list[dict[str, Any]]:
        """``GET /v1/tiers``, retried as ``remove`` is. Raises ``RemoveError``."""
        return listed(self.call("GET", "/v1/tiers")[0])

    def remove(
        self,
        image: ImageInput,
        *,
        tier: str | None = None,
        effect: str | None = None,
        background: ImageInput | None = None,
        **options: Any,
    ) -> Result:
        """One image through ``POST /v1/remove``; ``options`` are its query parameters (color, format, crop,
        outputs, ...). Raises ``RemoveError``."""
        parts = request_parts(image, background, {"tier": tier, "effect": effect, **options})
        return self.result(*self.call("POST", "/v1/remove", **parts))

    def remove_many(
        self, images: Iterable[ImageInput], *, concurrency: int = 8, **options: Any
    ) -> list[Result | RemoveError]:
        """Each image through ``remove``, ``concurrency`` at a time, in order; a failure is returned in its place,
        not raised, so one bad image does not lose the others."""

        def one(image: ImageInput) -> Result | RemoveError:
            try:
                return self.remove(image, **options)
            except FAILURES as exc:
                return as_failure(exc)

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(one, images))


class AsyncClient(_Retrying):
    """The same for asyncio."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout_s: float | None = 600.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(retries, backoff_s)
        self.http = httpx.AsyncClient(**http_options(url, api_key, timeout_s), transport=transport)

    async def wait_or_stop(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the event loop, ending early (True) once ``stop_retrying()`` is called."""
        deadline = time.monotonic() + seconds
        while not self.no_more_retries.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, STOP_CHECK_S))
        return True

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, **request: Any) -> tuple[httpx.Response, int]:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.http.request(method, path, **request)
            except httpx.TransportError as exc:
                error = unreachable(exc)
            else:
                if response.status_code == 200:
                    return response, attempt
                error = RemoveError.from_response(response)
            if not self.retriable(error, attempt):
                raise error
            if await self.wait_or_stop(self.wait_s(attempt, error)):
                raise error

    async def tiers(self) -> list[dict[str, Any]]:
        return listed((await self.call("GET", "/v1/tiers"))[0])

    async def remove(
        self,
        image: ImageInput,
        *,
        tier: str | None = None,
        effect: str | None = None,
        background: ImageInput | None = None,
        **options: Any,
    ) -> Result:
        parts = request_parts(image, background, {"tier": tier, "effect": effect, **options})
        return self.result(*(await self.call("POST", "/v1/remove", **parts)))

    async def remove_many(
        self, images: Iterable[ImageInput], *, concurrency: int = 8, **options: Any
    ) -> list[Result | RemoveError]:
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(image: ImageInput) -> Result | RemoveError:
            async with gate:
                try:
                    return await self.remove(image, **options)
                except FAILURES as exc:
                    return as_failure(exc)

        return list(await asyncio.gather(*(one(image) for image in images)))

"""What the Python client uploads for each kind of input, without a service (tests/integration/test_clients.py runs
it against the real one)."""

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.client import AsyncClient, Client, RemoveError, image_bytes, listed, request_parts, unreachable
from serve_app.codec import decode_image
from tests.unit.test_codec import asymmetric, with_orientation


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_pil_image_goes_upright_as_its_file_would(orientation: int) -> None:
    """The client sends a PIL image as PNG, which carries no EXIF: a rotated photo opened with Pillow came back
    sideways, where the same file by path came back upright."""
    data = with_orientation(asymmetric(), orientation, "JPEG")
    from_file = decode_image(data, 10_000_000)
    from_pil = decode_image(image_bytes(Image.open(io.BytesIO(data))), 10_000_000)
    np.testing.assert_array_equal(from_pil, from_file)
    stored = np.asarray(Image.open(io.BytesIO(data)))  # the pixels as stored, orientation not applied
    assert from_file.shape != stored.shape or not np.array_equal(from_file, stored)


def test_a_cmyk_pil_image_is_sent_as_rgb() -> None:
    """PNG holds no CMYK: Pillow raised OSError in the client, where the file by path worked."""
    cmyk = Image.fromarray(asymmetric()).convert("CMYK")
    sent = decode_image(image_bytes(cmyk), 10_000_000)
    np.testing.assert_array_equal(sent, np.asarray(cmyk.convert("RGB")))


@pytest.mark.parametrize("mode", ["I", "F", "I;16", "LA", "P"])
def test_a_pil_image_in_any_mode_can_be_sent(mode: str) -> None:
    """32-bit integer and float images are no PNG mode Pillow writes: they go as RGB."""
    image = Image.fromarray(asymmetric()).convert("L").convert(mode)
    assert decode_image(image_bytes(image), 10_000_000).shape == (24, 40, 3)


class StartingService(BaseHTTPRequestHandler):
    """``GET /v1/tiers`` as a service that is not up yet answers it: 503 with ``Retry-After`` twice, then 200."""

    answers: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        status = self.answers.pop(0) if self.answers else 200
        body = json.dumps([{"tier": "fast"}] if status == 200 else {"error": {"code": "starting", "message": "wait"}})
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def starting_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StartingService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_tiers_is_retried_as_remove_is(starting_service: str) -> None:
    """``tiers()`` raised httpx's errors and never retried, so a script that asked it first, while the service was
    starting, failed where ``remove`` would have waited."""
    StartingService.answers = [503, 503]
    with Client(starting_service, retries=2, backoff_s=0) as client:
        assert client.tiers() == [{"tier": "fast"}]
    StartingService.answers = [503, 503]
    with Client(starting_service, retries=1, backoff_s=0) as client, pytest.raises(RemoveError) as raised:
        client.tiers()
    assert (raised.value.status, raised.value.code) == (503, "starting")

    async def async_tiers() -> list[dict[str, object]]:
        async with AsyncClient(starting_service, retries=2, backoff_s=0) as client:
            return await client.tiers()

    StartingService.answers = [503, 503]
    assert asyncio.run(async_tiers()) == [{"tier": "fast"}]


def test_an_unreachable_service_is_a_remove_error() -> None:
    with Client("http://127.0.0.1:9", retries=1, backoff_s=0) as client, pytest.raises(RemoveError) as raised:
        client.tiers()
    assert raised.value.code == "unreachable"


@pytest.mark.parametrize(
    "url",
    [
        "localhost:8000",
        "gpu-box:8000",
        "http://",
        "http://localhost:abc",
        "http://localhost:0",
        "http://localhost:99999",
        "http://a b:80",
    ],
)
def test_a_url_that_cannot_work_is_refused_at_once(url: str) -> None:
    """Each such URL failed every image after its retries (a port that is no number crashed the CLI)."""
    with pytest.raises(ValueError, match="URL"):
        Client(url)
    with pytest.raises(ValueError, match="URL"):
        AsyncClient(url)


def test_usable_urls_pass() -> None:
    for url in ("http://localhost:8000", "https://gpu-box.example", "http://[::1]:8000/prefix", "http://10.0.0.2"):
        Client(url).close()


def test_lists_are_sent_as_comma_lists_and_float_arrays_are_refused_clearly() -> None:
    """``outputs=["rgba", "mask"]`` went as the string "['rgba', 'mask']" (a puzzling 422); a float array raised
    Pillow's "Cannot handle this data type"."""
    params = request_parts(b"x", None, {"outputs": ["rgba", "white:jpeg"], "crop": True, "tier": None})["params"]
    assert params == {"outputs": "rgba,white:jpeg", "crop": "true"}
    with pytest.raises(TypeError, match="uint8"):
        image_bytes(np.zeros((4, 4, 3), np.float32))


def test_the_wait_doubles_up_to_a_bound_unless_the_service_says() -> None:
    """Doubling without a bound waited 17 minutes before a twelfth try at a service that was down."""
    client = Client(retries=12, backoff_s=1.0)
    silent = RemoveError(0, "unreachable", "ConnectError")
    assert [client.wait_s(attempt, silent) for attempt in (1, 2, 3, 4, 5, 12)] == [1, 2, 4, 8, 10, 10]
    assert client.wait_s(12, RemoveError(503, "overloaded", "", retry_after=5.0)) == 5.0


def test_a_tier_list_that_is_not_json_is_a_remove_error() -> None:
    with pytest.raises(RemoveError, match="not a JSON list"):
        listed(httpx.Response(200, text="<html>a proxy's page</html>"))
    assert listed(httpx.Response(200, json=[{"tier": "fast"}])) == [{"tier": "fast"}]


def test_only_transport_errors_that_may_pass_are_retried() -> None:
    """A refused or dropped connection or a timeout may not happen again; a forward proxy's 407 or a URL httpx
    cannot send will, and each cost ~95 s of retries per image."""
    client = Client(retries=3)
    for passing in (httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("cut")):
        assert client.retriable(unreachable(passing), 1), passing
    for lasting in (httpx.ProxyError("407 Proxy Authentication Required"), httpx.UnsupportedProtocol("ftp")):
        assert not client.retriable(unreachable(lasting), 1), lasting
    assert client.retriable(RemoveError(502, "http_error", "Bad Gateway"), 1)  # a reverse proxy's, mid-restart

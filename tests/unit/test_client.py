"""What the Python client uploads for each kind of input, without a service (tests/integration/test_clients.py runs
it against the real one)."""

import asyncio
import email.utils
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.client import (
    CONNECT_TIMEOUT_S,
    AsyncClient,
    Client,
    RemoveError,
    image_bytes,
    listed,
    request_parts,
    retry_after,
    unreachable,
)
from serve_app.codec import decode_image
from tests.support.fake_service import Answer, fake_service
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
    for attempt, base in zip((1, 2, 3, 4, 5, 12), (1, 2, 4, 8, 10, 10), strict=True):
        assert base <= client.wait_s(attempt, silent) <= base * 1.5
    for _ in range(20):
        assert 5.0 <= client.wait_s(12, RemoveError(503, "overloaded", "", retry_after=5.0)) <= 7.5


def test_clients_refused_together_do_not_come_back_together() -> None:
    """Every request a full service refused with Retry-After: 2 came back in the same instant and was refused again:
    the waits spread over half the time asked."""
    client = Client()
    waits = [client.wait_s(1, RemoveError(503, "overloaded", "", retry_after=2.0)) for _ in range(200)]
    assert min(waits) >= 2.0 and max(waits) <= 3.0
    assert max(waits) - min(waits) > 0.5  # 200 draws over 1 s: a spread this small would take no jitter at all
    now = [client.wait_s(1, RemoveError(503, "overloaded", "", retry_after=0.0)) for _ in range(200)]
    assert min(now) >= 0.0 and max(now) <= 0.1 and max(now) - min(now) > 0.05  # "now" spread over 0.1 s


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


def test_retry_after_as_a_date_is_honoured() -> None:
    """A reverse proxy may send Retry-After as an HTTP date: float() failed on it, and the client fell back to its
    own 1-2-4 s backoff."""
    soon = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after(httpx.Response(503, headers={"retry-after": soon})) or 0) <= 30
    long_ago = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after(httpx.Response(503, headers={"retry-after": long_ago})) == 0.0
    far = "Wed, 21 Oct 2099 07:28:00 GMT"
    assert retry_after(httpx.Response(503, headers={"retry-after": far})) == 60.0  # MAX_RETRY_AFTER_S
    asctime = "Sun Nov  6 08:49:37 2099"  # the third form HTTP allows: no zone named, GMT meant
    assert retry_after(httpx.Response(503, headers={"retry-after": asctime})) == 60.0
    assert retry_after(httpx.Response(503, headers={"retry-after": "soon"})) is None
    assert retry_after(httpx.Response(503)) is None


def test_stop_retrying_ends_the_wait_between_tries() -> None:
    """The CLI's Ctrl-C: a request waiting to be tried again (a service that stays down) gives its last error at
    once, not after its remaining tries."""
    with fake_service(lambda *_: Answer(503, "overloaded", {"Retry-After": "30"})) as (url, seen):
        client = Client(url, retries=5)
        failed: list[BaseException] = []
        asking = threading.Thread(target=lambda: failed.extend(caught(client.tiers)))
        started = time.monotonic()
        asking.start()
        time.sleep(0.5)
        client.stop_retrying()
        asking.join(10)
        assert not asking.is_alive() and time.monotonic() - started < 5
        assert isinstance(failed[0], RemoveError) and failed[0].code == "overloaded" and seen.requests == 1
        client.close()

        async def ask_then_stop() -> float:
            async with AsyncClient(url, retries=5) as async_client:
                asking = asyncio.ensure_future(async_client.tiers())
                await asyncio.sleep(0.5)
                threading.Thread(target=async_client.stop_retrying).start()  # from another thread, as documented
                stopped = time.monotonic()
                with pytest.raises(RemoveError):
                    await asking
                return time.monotonic() - stopped

        assert asyncio.run(ask_then_stop()) < 2  # not the 30 s Retry-After


def caught(call: Callable[[], object]) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:
        return [exc]
    return []


@pytest.mark.parametrize("key", ["sécret", "key\r", "two words"])
def test_an_api_key_a_header_cannot_carry_is_refused_at_once(key: str) -> None:
    """Non-ASCII raised httpx's UnicodeEncodeError from the first request; a pasted line end failed every image as
    an 'Illegal header value' that did not name the key."""
    with pytest.raises(ValueError, match="API key"):
        Client(api_key=key)
    with pytest.raises(ValueError, match="API key"):
        AsyncClient(api_key=key)


def test_more_than_a_hundred_requests_are_in_flight_when_asked() -> None:
    """httpx holds a client to 100 connections: remove_many(concurrency=150) and the CLI's --concurrency 150 had
    50 waiting. The concurrency asked is the cap."""
    over_a_hundred = threading.Event()

    def answer(*_: object) -> Answer:  # each request is held until over 100 are in flight (or 60 s pass)
        with seen_box[0].lock:
            if seen_box[0].in_flight > 100:
                over_a_hundred.set()
        over_a_hundred.wait(60)
        return Answer(200, body=b"png")

    seen_box: list[Any] = []
    with fake_service(answer) as (url, seen), Client(url) as client:
        seen_box.append(seen)
        results = client.remove_many([b"x"] * 130, concurrency=130)
    assert all(not isinstance(r, RemoveError) for r in results)
    assert over_a_hundred.is_set() and seen.most_in_flight > 100, seen.most_in_flight


def test_a_host_that_takes_no_connection_is_given_up_within_seconds() -> None:
    """A firewalled host held each try for the whole 600 s answer timeout (13 tries: hours an image)."""
    assert Client(timeout_s=600).http.timeout.connect == CONNECT_TIMEOUT_S == 10
    assert Client(timeout_s=2).http.timeout.connect == 2  # a shorter timeout of the caller's is kept
    assert Client(timeout_s=None).http.timeout.read is None  # httpx's "no timeout" still means that

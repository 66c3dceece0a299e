"""The upload reader on Starlette's own request and multipart parser (no Ray, no server)."""

import asyncio

import pytest
from starlette.requests import Request

from deployments.uploads import listed, read_upload
from serve_app.errors import InvalidParameterError


def multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "x-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def read(body: bytes, content_type: str) -> object:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    delivered = False

    async def receive() -> dict[str, object]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    return asyncio.run(read_upload(Request(scope, receive)))


def test_a_body_with_no_file_field_names_what_was_sent_briefly() -> None:
    """Each name and the list are bounded: 32 text fields with 4 KB names made a 128 KB 422."""
    with pytest.raises(InvalidParameterError) as refused:
        read(*multipart({"tier": "fast", "effect": "mask"}))
    assert refused.value.message.endswith("(fields sent: effect, tier)")
    body, content_type = multipart({f"{i:02d}" + "n" * 4000: "v" for i in range(32)})
    with pytest.raises(InvalidParameterError) as refused:
        read(body, content_type)
    assert len(refused.value.message) < 800 and refused.value.message.endswith("and 22 more)")


def test_listed_shortens_long_names_and_counts_the_rest() -> None:
    assert listed(["b", "a"]) == "a, b"
    assert listed(["x" * 50]) == "x" * 39 + "…"
    assert listed([str(i) for i in range(12)], most=3) == "0, 1, 10 and 9 more"


def test_file_parts_of_other_names_are_reported_not_dropped() -> None:
    boundary = "x-boundary"

    def part(name: str, body: str, filename: str | None = None) -> str:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n{body}\r\n"

    body = part("image", "PNG...", "a.png") + part("backgroud", "PNG...", "b.png") + part("effect", "mask", "e.txt")
    upload = read((body + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}")
    assert upload.image == b"PNG..." and upload.background is None  # type: ignore[attr-defined]
    assert upload.other_files == ["backgroud", "effect"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("leaves", ["disconnect", "cancelled", "proxy_died"])
def test_a_client_that_leaves_mid_upload_is_client_closed_not_a_500(leaves: str) -> None:
    """Starlette's ClientDisconnect (or Ray's TaskCancelledError, when Serve's proxy cancels the request) escaped as a
    500 with a traceback: any client could fill the 500 rate and the log so. A proxy killed mid-upload (Serve's
    shutdown, when a stop's drain was cut short) cuts the client off too: ActorDiedError is no 500 either."""
    from ray.exceptions import ActorDiedError, TaskCancelledError

    from deployments.uploads import UploadLimits
    from serve_app.errors import ClientClosedError

    async def receive() -> dict[str, object]:
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": b"x" * 100, "more_body": True}
        if leaves == "cancelled":
            raise TaskCancelledError()
        if leaves == "proxy_died":
            raise ActorDiedError()
        return {"type": "http.disconnect"}

    async def route(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        try:
            await read_upload(Request(scope, receive))  # type: ignore[arg-type]
        except Exception as exc:
            caught.append(exc)

    async def send(message: object) -> None:
        pass

    sent: list[bool] = []
    caught: list[Exception] = []
    headers = [(b"content-type", b"image/png")]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    asyncio.run(UploadLimits(route, max_bytes=10**6, stall_s=5, min_bytes_per_s=1)(scope, receive, send))  # type: ignore[arg-type]
    (error,) = caught
    assert isinstance(error, ClientClosedError) and error.status == 499, repr(error)


@pytest.mark.parametrize(
    "names", [("image", "image"), ("image", "file"), ("file", "file"), ("background", "background")]
)
def test_two_images_in_one_body_are_refused_not_one_chosen(names: tuple[str, str]) -> None:
    """Two `image` parts were answered 200 for the last one alone, and the first was dropped without a word."""
    boundary = "x-boundary"
    parts = ["image"] if names[0] == "background" else []
    body = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{n}.png"\r\n\r\nPNG{n}\r\n'
        for n, name in enumerate([*parts, *names])
    )
    with pytest.raises(InvalidParameterError, match="one image a request") as refused:
        read((body + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}")
    assert refused.value.status == 422, refused.value

"""The guard Serve's proxy runs before our ingress (deployments/proxy_guard.py), driven as the proxy drives it:
an ASGI app inside it that answers as Serve's proxy does. The integration tests check it inside a real proxy."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from deployments.proxy_guard import ProxyGuard, middlewares


def http_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v1/remove", "headers": headers}


def drive(inner: Any, headers: list[tuple[bytes, bytes]] | None = None, client_leaves: bool = False) -> list[Message]:
    sent: list[Message] = []
    incoming = [{"type": "http.disconnect"}] if client_leaves else [{"type": "http.request", "body": b"x"}]

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(ProxyGuard(inner)(http_scope(headers or []), receive, send))
    return sent


def status_and_body(sent: list[Message]) -> tuple[int, dict[str, bytes], bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_client_headers_that_lift_server_limits_never_reach_the_proxy() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["headers"])
        await JSONResponse({"ok": True})(scope, receive, send)

    headers = [
        (b"x-request-timeout-seconds", b"0"),
        (b"X-Request-Disconnect-Disabled", b"?1"),
        (b"content-type", b"image/png"),
    ]
    status, _, body = status_and_body(drive(proxy, headers))
    assert status == 200 and json.loads(body) == {"ok": True}
    assert seen == [[(b"content-type", b"image/png")]]


def test_a_request_the_proxy_drops_unanswered_gets_a_retriable_503() -> None:
    async def proxy_whose_ingress_died(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # Serve's proxy returns without an answer on ActorDiedError

    status, headers, body = status_and_body(drive(proxy_whose_ingress_died))
    assert status == 503 and headers[b"retry-after"] == b"2"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"]["code"] == "ingress_unavailable"


def test_a_proxy_error_before_answering_is_a_retriable_503_too() -> None:
    async def failing_proxy(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("lost the replica")

    status, _, body = status_and_body(drive(failing_proxy))
    assert status == 503 and json.loads(body)["error"]["code"] == "ingress_unavailable"


def test_a_client_that_left_gets_nothing() -> None:
    async def proxy_that_cancelled(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the disconnect: Serve cancels the request and answers nothing

    assert drive(proxy_that_cancelled, client_leaves=True) == []


def test_the_proxys_plain_text_refusals_become_json_with_their_headers() -> None:
    async def proxy_backpressure(scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse("Request dropped due to backpressure", 503, headers={"Retry-After": "3"})
        await response(scope, receive, send)

    status, headers, body = status_and_body(drive(proxy_backpressure))
    assert status == 503 and headers[b"retry-after"] == b"3" and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": {"code": "overloaded", "message": "Request dropped due to backpressure"}}
    assert int(headers[b"content-length"]) == len(body)


def test_our_own_answers_pass_untouched() -> None:
    async def ingress_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"error": {"code": "tier_unavailable", "message": "m"}}, 503)(scope, receive, send)

    status, _, body = status_and_body(drive(ingress_answer))
    assert status == 503 and json.loads(body)["error"]["code"] == "tier_unavailable"


def test_serve_gets_a_list_of_starlette_middlewares() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert validate_http_proxy_callback_return(middlewares())[0].cls is ProxyGuard

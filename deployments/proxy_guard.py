"""Middleware for Serve's HTTP proxy, which runs it before the request reaches any replica. Serve installs it from
the environment Ray was started with:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_guard:middlewares

(``scripts/serve.sh`` sets it; on a cluster, set it where ``ray start`` runs: docs/operations.md). It does three
things Serve's options cannot:

1. It drops ``x-request-timeout-seconds`` and ``x-request-disconnect-disabled`` from every request. Serve's proxy
   honours them from any client: the first lifts ``http_options.request_timeout_s`` (0 turns it off), the second
   keeps work running after the client has gone. The server's limits stay the server's.
2. When the ingress replica dies with a request in flight, the proxy ends that request without an answer, which
   uvicorn turns into a plain-text 500. Here it becomes a 503 with ``Retry-After``: nothing was returned, and
   inference is idempotent, so the client may send it again.
3. The proxy's own refusals (503 when the ingress's queue is full, 408 past ``request_timeout_s``) get the
   service's JSON error body instead of plain text, keeping their status and headers.

Only light imports here: this module is loaded into every proxy process.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import error_body

logger = logging.getLogger("ray.serve")

CLIENT_OVERRIDES = (b"x-request-timeout-seconds", b"x-request-disconnect-disabled")
PROXY_REFUSALS = {408: "request_timeout", 503: "overloaded"}  # the proxy's plain-text answers, as our codes
RETRY_AFTER_S = "2"  # a replacement ingress replica starts in seconds


def middlewares() -> list[Middleware]:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names: Serve calls it once per proxy."""
    return [Middleware(ProxyGuard)]


def json_messages(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    body = json.dumps(error_body(code, message)).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    start_headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return [
        {"type": "http.response.start", "status": status, "headers": start_headers},
        {"type": "http.response.body", "body": body},
    ]


class ProxyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() not in CLIENT_OVERRIDES]}
        started = disconnected = False
        refusal: dict[str, Any] | None = None  # a plain-text refusal of the proxy's, held to be sent as JSON

        async def guarded_send(message: Message) -> None:
            nonlocal started, refusal
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", [])
                plain = any(k.lower() == b"content-type" and v.startswith(b"text/plain") for k, v in headers)
                if message["status"] in PROXY_REFUSALS and plain:
                    refusal = {"status": message["status"], "headers": headers, "text": b""}
                    return
            elif message["type"] == "http.response.body" and refusal is not None:
                refusal["text"] += message.get("body", b"")
                if not message.get("more_body", False):
                    status = refusal["status"]
                    text = refusal["text"].decode(errors="replace").strip()
                    for part in json_messages(status, PROXY_REFUSALS[status], text, refusal["headers"]):
                        await send(part)
                return
            await send(message)

        async def watched_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        try:
            await self.app(scope, watched_receive, guarded_send)
        except Exception:
            if started:
                raise
            logger.warning("the proxy failed a request before answering it; answering 503", exc_info=True)
        if not started and not disconnected:
            # The proxy gives up without an answer when the replica it sent the request to died (or on an error
            # of its own). A client that has gone needs no answer: the proxy cancelled its request.
            logger.warning("%s %s: the ingress replica died before answering; 503", scope["method"], scope["path"])
            for part in json_messages(
                503,
                "ingress_unavailable",
                "the service lost this request (an ingress replica stopped); nothing was done for it: send it again",
                [(b"retry-after", RETRY_AFTER_S.encode())],
            ):
                await send(part)


# How Ray is told to load the guard into its proxies: set in the environment Ray starts with.
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = f"{__name__}:middlewares"

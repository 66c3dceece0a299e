"""API keys at the door: an ASGI middleware that answers 401 (our JSON) to a request without a valid key, before
any route runs. Health, readiness and the API docs stay open (probes and a browser carry no key)."""

import hashlib

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments import route_path
from deployments.http_errors import service_error_response
from serve_app.auth import ApiKeys
from serve_app.errors import UnauthorizedError

# Exact paths (a later route such as /healthz/details or /docs-admin is not open by accident), and the docs' files.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIX = "/static-offline-docs/"


def presented_key(headers: Headers) -> str:
    """``Authorization: Bearer <key>``, else ``X-API-Key: <key>``."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key", "").strip()


class ApiKeyCheck:
    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if not self.keys.accepts(key):
            reason = "an invalid API key" if key else "no API key"
            refused = UnauthorizedError(
                f"this service needs an API key and the request carried {reason}: send `Authorization: Bearer "
                f"<key>` or `X-API-Key: <key>`"
            )
            await service_error_response(refused)(scope, receive, send)
            return
        # Who asked, for the mask cache: one caller never learns from a cache hit what another one sent.
        scope.setdefault("state", {})["caller"] = hashlib.sha256(key.encode("latin-1", "replace")).hexdigest()
        await self.app(scope, receive, send)

    @staticmethod
    def _open(scope: Scope) -> bool:
        path = route_path(scope)
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIX)

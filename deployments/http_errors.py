"""Every error becomes the same JSON, ``{"error": {"code", "message"}}``, in one place: our domain errors with
the status they carry (``serve_app/errors.py``), FastAPI's parameter validation as 422, Starlette's 404/405, and
anything unexpected as a logged 500."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import SERVE_LOGGER
from serve_app.errors import InvalidParameterError, ServiceError, error_body
from serve_app.schemas import ErrorBody

logger = logging.getLogger(SERVE_LOGGER)

RETRY_AFTER_S = "5"  # what a 503 or 504 tells a client to wait
RETRIABLE = (503, 504)  # overload and deadlines: the same request may well succeed later
WATCHED = (408, *RETRIABLE)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody.model_validate(error_body(code, message))
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    # One line each, no traceback: the refusals an operator watches (overload, deadlines, slow uploads:
    # docs/operations.md's table) as WARNING, a 500 as ERROR (ours to look at); a bad request is the caller's.
    if exc.status in WATCHED:
        logger.warning("%s: %s", exc.code, exc.message)
    elif exc.status >= 500:
        logger.error("%s: %s", exc.code, exc.message)
    headers = {
        503: {"Retry-After": RETRY_AFTER_S},
        504: {"Retry-After": RETRY_AFTER_S},
        401: {"WWW-Authenticate": "Bearer"},
    }.get(exc.status)
    return error_response(exc.status, exc.code, exc.message, headers)


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    return service_error_response(exc)


MAX_MESSAGE_CHARS = 500


def validation_message(exc: RequestValidationError | ValidationError) -> str:
    """pydantic's complaints as one line: ``name: what is wrong; ...`` (a check over several parameters has no
    name of its own, and its message names them)."""
    complaints = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error.get("loc", ()) if part != "query")
        message = str(error.get("msg", "")).removeprefix("Value error, ")  # pydantic's prefix for our own checks
        complaints.append(f"{name}: {message}" if name else message)
    text = "; ".join(complaints)
    # A message may quote the value sent, and a form field can be megabytes: never echo that much back.
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(InvalidParameterError.status, InvalidParameterError.code, validation_message(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405: same JSON shape
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving a request")
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the ingress log")


class UnexpectedErrors:
    """The JSON 500 for an unexpected exception, answered where this middleware sits: inside CORS. Starlette answers
    it from its outermost layer, past the CORS middleware, so a page on an allowed origin could not read it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # too late for an answer of our own: Starlette's outer layer logs it
                raise
            response = await _unexpected(Request(scope), exc)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types handlers as taking any Exception; each here is registered for the one it handles.
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)

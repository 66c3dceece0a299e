"""Domain errors, each carrying its HTTP status and a stable machine-readable code.

The ingress has one handler that turns any of them into ``{"error": {"code", "message"}}``
(``deployments/http_errors.py``); nothing else in the code base picks HTTP statuses. Each takes its message as
its only argument, so it pickles as a plain exception and crosses Ray's process boundaries intact.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
SUMMARY_CHARS = 400
HEAD_CHARS = 160  # of Serve's sentence, so that the exception fits after it
# `IndexError: ...`, `pydantic_core._pydantic_core.ValidationError: ...`, `ray.exceptions.RayActorError: ...`
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
FURTHER_INFORMATION = "For further information visit"


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON every error answer carries (``ErrorBody`` in ``schemas.py`` documents it in the OpenAPI spec)."""
    return {"error": {"code": code, "message": message}}


def summary(message: str) -> str:
    """One line for a client from a message meant for operators. Serve's deployment messages carry a whole
    traceback, with terminal colours, pids and paths: a client gets Serve's own sentence (its first line, shortened)
    and the exception (from the last line that names one, with the lines after it: a pydantic error's details),
    without pydantic's "For further information" links. The full text stays in ``serve status`` and the logs."""
    lines = [
        line.strip()
        for line in TERMINAL_CODES.sub("", message).splitlines()
        if line.strip() and not line.strip().startswith(FURTHER_INFORMATION)
    ]
    if not lines:
        return ""
    named = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    start = named[-1] if named else len(lines) - 1
    exception = " ".join(lines[start:])
    head = lines[0] if len(lines[0]) <= HEAD_CHARS else lines[0][: HEAD_CHARS - 3] + "..."
    text = exception if start == 0 else f"{head} {exception}"
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the request is wrong (4xx) -------------------------------------------------------------------------------
class InvalidParameterError(ServiceError):
    status = 422
    code = "invalid_parameter"


class MalformedRequestError(ServiceError):
    status = 400
    code = "malformed_request"


class EmptyUploadError(ServiceError):
    status = 400
    code = "empty_upload"


class InvalidImageError(ServiceError):
    status = 400
    code = "invalid_image"


class UnsupportedMediaTypeError(ServiceError):
    status = 415
    code = "unsupported_media_type"


class UnauthorizedError(ServiceError):
    """API keys are on and the request carries none, or not a valid one."""

    status = 401
    code = "unauthorized"


class UploadTooSlowError(ServiceError):
    """The upload's body paused too long, or arrived too slowly: its request slot goes to someone else."""

    status = 408
    code = "upload_too_slow"


class PayloadTooLargeError(ServiceError):
    status = 413
    code = "payload_too_large"


# --- the service cannot serve it now (5xx) ----------------------------------------------------------------------
class ClientClosedError(ServiceError):
    """The client went away while its upload was being read. Nobody receives this answer: it is what the access
    line and the metrics say (nginx's 499), rather than a 500 with a traceback that any client could cause."""

    status = 499
    code = "client_closed"


class TierUnavailableError(ServiceError):
    """The tier's model deployment is not running (still loading, failed, or cannot be scheduled)."""

    status = 503
    code = "tier_unavailable"


class OverloadedError(ServiceError):
    """This ingress replica has all the image requests it admits in flight (``ingress.max_image_requests``), or
    holds all the decoded images it may (``ingress.max_decoded_megapixels``)."""

    status = 503
    code = "overloaded"


class DeadlineExceededError(ServiceError):
    """The request waited and ran longer than its tier's ``deadline_s``; what had not run by then is not run."""

    status = 504
    code = "deadline_exceeded"


class InferenceError(ServiceError):
    status = 500
    code = "inference_failed"


# --- configuration and start-up (raised while a deployment starts; never a request's fault) ---------------------
class ConfigurationError(ServiceError):
    status = 500
    code = "configuration_error"


class WeightsUnavailableError(ConfigurationError):
    code = "weights_unavailable"


class ChecksumMismatchError(ConfigurationError):
    code = "checksum_mismatch"


class UnknownRuntimeError(ConfigurationError):
    code = "unknown_runtime"


class DeviceUnavailableError(ConfigurationError):
    code = "device_unavailable"


def all_error_types() -> list[type[ServiceError]]:
    """Every concrete error class (for the test that pins the status of each)."""
    found: list[type[ServiceError]] = []
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found

"""How errors reach an HTTP caller: one table of statuses, one JSON shape.

The body is Google's JSON error shape, `{"error": {"code", "status", "message", "reason", "details"}}`:
`code` the HTTP status, `status` the canonical code (the same name gRPC reports), `reason` the
UPPER_SNAKE reason, and `details` one `google.rpc.ErrorInfo` carrying the reason and domain, as gRPC's
status details do. Unexpected errors are logged under an incident id (`server.errors.reported`) and
answered 500 without their details.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from lookalike.client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LookalikeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from lookalike.server.errors import bounded, reported

ERROR_DOMAIN = "lookalike.v1"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"

HTTP_STATUSES: dict[type[LookalikeError], int] = {
    InvalidArgument: 400,
    FailedPrecondition: 400,
    Unauthenticated: 401,
    PermissionDenied: 403,
    NotFound: 404,
    AlreadyExists: 409,
    ResourceExhausted: 429,
    Cancelled: 499,
    Internal: 500,
    Unavailable: 503,
    DeadlineExceeded: 504,
}
"""The HTTP status of each domain error (Google's mapping of canonical codes): the one place errors meet
HTTP statuses."""

REASON_STATUSES: dict[str, int] = {
    "REQUEST_TOO_LARGE": 413,
}
"""Reasons whose status HTTP names more exactly than their code does: a body past --max-request-bytes."""


def request_too_large(limit: int) -> ResourceExhausted:
    """A request body past `--max-request-bytes` (413), refused before it is read whole."""
    return ResourceExhausted(
        f"the request body is larger than {limit:,} bytes (--max-request-bytes): send less in one request",
        "REQUEST_TOO_LARGE",
    )


def http_status(error: LookalikeError) -> int:
    return REASON_STATUSES.get(error.reason) or HTTP_STATUSES.get(type(error), 500)


def error_body(error: LookalikeError) -> dict[str, Any]:
    return {
        "error": {
            "code": http_status(error),
            "status": error.code,
            "message": bounded(error.message),
            "reason": error.reason,
            "details": [{"@type": ERROR_INFO_TYPE, "reason": error.reason, "domain": ERROR_DOMAIN}],
        }
    }


def error_response(error: Exception, what: str) -> JSONResponse:
    """The response for any failure: a domain error as it is; anything else logged and reported as 500."""
    shown = reported(error, what)
    headers = {}
    if isinstance(shown, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(shown, ResourceExhausted) and shown.reason != "REQUEST_TOO_LARGE":
        headers["Retry-After"] = "1"
    return JSONResponse(error_body(shown), status_code=http_status(shown), headers=headers)

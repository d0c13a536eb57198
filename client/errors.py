"""Typed errors shared by server and client: one class per gRPC status code.

The server raises these and maps them to status codes in one place; the client
re-raises a failed call as the same class, so callers catch `NotFound`, not
`grpc.RpcError`. No grpc import here: codes are carried by name.
"""

from __future__ import annotations

from typing import ClassVar


class LookalikeError(Exception):
    """Base of every error Lookalike reports; `code` names the gRPC status."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __reduce__(self) -> tuple[type[LookalikeError], tuple[str, str]]:
        # Keeps the reason when an error crosses a process boundary (fingerprint workers).
        return type(self), (self.message, self.reason)


class InvalidArgument(LookalikeError):
    code = "INVALID_ARGUMENT"


class NotFound(LookalikeError):
    code = "NOT_FOUND"


class AlreadyExists(LookalikeError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(LookalikeError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(LookalikeError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(LookalikeError):
    code = "PERMISSION_DENIED"


class Unauthenticated(LookalikeError):
    code = "UNAUTHENTICATED"


class DeadlineExceeded(LookalikeError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(LookalikeError):
    code = "CANCELLED"


class Unavailable(LookalikeError):
    code = "UNAVAILABLE"


class Internal(LookalikeError):
    code = "INTERNAL"


class DataLoss(LookalikeError):
    """Stored data that cannot be read back (a corrupt record)."""

    code = "DATA_LOSS"


ERRORS_BY_CODE: dict[str, type[LookalikeError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        DeadlineExceeded,
        Cancelled,
        Unavailable,
        Internal,
        DataLoss,
    )
}


def error_for_code(code: str, message: str, reason: str = "") -> LookalikeError:
    """The typed error for a status code name (`LookalikeError` when unknown)."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        error = LookalikeError(message, reason)
        error.code = code  # type: ignore[misc]
        return error
    return cls(message, reason)

"""Lookalike's thin client: `LookalikeClient`, typed results and typed errors.

Imports grpc and protobuf only, never faiss, onnxruntime, lmdb or Pillow.
"""

from client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LookalikeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from client.stub import LookalikeClient
from client.types import (
    AddResult,
    AuditRecord,
    Base64,
    CheckResult,
    Entry,
    Evidence,
    Hashes,
    KeyInfo,
    ListInfo,
    Match,
    NewKey,
    Url,
)

__all__ = [
    "AddResult",
    "AlreadyExists",
    "AuditRecord",
    "Base64",
    "CheckResult",
    "Entry",
    "Evidence",
    "FailedPrecondition",
    "Hashes",
    "InvalidArgument",
    "KeyInfo",
    "ListInfo",
    "LookalikeClient",
    "LookalikeError",
    "Match",
    "NewKey",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Url",
]

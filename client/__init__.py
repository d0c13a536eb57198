"""Lookalike's thin client: `LookalikeClient`, typed results and typed errors.

Imports grpc and protobuf only, never faiss, onnxruntime, lmdb or Pillow.
"""

from client.errors import (
    AlreadyExists,
    InvalidArgument,
    LookalikeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from client.stub import LookalikeClient
from client.types import AddResult, Base64, CheckResult, Entry, Evidence, Hashes, ListInfo, Match, Url

__all__ = [
    "AddResult",
    "AlreadyExists",
    "Base64",
    "CheckResult",
    "Entry",
    "Evidence",
    "Hashes",
    "InvalidArgument",
    "ListInfo",
    "LookalikeClient",
    "LookalikeError",
    "Match",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Url",
]

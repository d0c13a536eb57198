"""The domain's records: lists, entries, API keys and audit records, and the rules for what may be stored.

Every layer speaks these (operations, the service, storage, the transports' converters); how they are laid
out on disk is `lookalike.server.storage`'s business, how they are written `lookalike.server.writes`'.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lookalike.client.errors import InvalidArgument

ADMIN, WRITER, CHECKER = "admin", "writer", "checker"
ROLES = (ADMIN, WRITER, CHECKER)
"""API key roles; what each may do is `lookalike.server.auth`'s table."""

LIST_KIND_DISALLOW = "disallow"
LIST_KIND_ALLOW = "allow"
LIST_KINDS = (LIST_KIND_DISALLOW, LIST_KIND_ALLOW)

AUDIT_LIST_CREATE = "list.create"
AUDIT_LIST_UPDATE = "list.update"
AUDIT_LIST_DELETE = "list.delete"
AUDIT_ENTRY_ADD = "entry.add"
AUDIT_ENTRY_REMOVE = "entry.remove"
AUDIT_KEY_CREATE = "key.create"
AUDIT_KEY_REVOKE = "key.revoke"
AUDIT_ENTRY_CONFIRM = "entry.confirm"

LIST_NAME = re.compile(r"^[a-z0-9_-]{1,64}\Z")  # \Z: `$` would also accept a trailing newline
LISTS_NAMED_MAX = 256
"""List names one request may carry (a check's, a key's): more than any caller needs, few enough that
authorizing, logging and checking them stays cheap whatever a caller sends."""
LISTS_NAMED_MAX_BYTES = LISTS_NAMED_MAX * 64
ENTRY_ID_MAX = 256
META_MAX_ITEMS = 64
META_MAX_CHARS = 4096
DESCRIPTION_MAX_CHARS = 4096


@dataclass(frozen=True)
class ListRecord:
    uid: int
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    created: float
    entry_count: int = 0
    next_seq: int = 1
    next_change: int = 1
    dihedral: bool = True
    """Checks also match PDQ's rotations and mirrors; lists stored before the setting existed did."""
    kind: str = LIST_KIND_DISALLOW
    """"allow": its matches never flag a check, and outrank disallow matches (lists made before kinds: disallow)."""
    pdq_only_count: int | None = 0
    """Entries with a PDQ hash and no embedding, which only a PDQ search finds; None on lists stored
    before the count was kept (unknown)."""
    thumbnails: bool = False
    """Pictures added keep a small thumbnail; off by default, and on lists stored before it existed: no
    picture is kept unless a list opts in."""
    keypoints: bool = True
    """Pictures added keep their ORB keypoints (`server/keypoints.py`), which checks compare where the embedding
    is unsure; on by default. Off keeps a list of millions small (about 17 KiB an entry less)."""


@dataclass(frozen=True)
class EntryRecord:
    """An entry's fingerprints (hashes as bytes, b"" for none) and meta; the picture itself is never stored."""

    id: str
    seq: int
    sha256: bytes
    pdq: bytes
    pdq_quality: int
    phash: bytes
    model: str
    meta: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    md5: bytes = b""
    added_by: str | None = None
    """Id of the key that added it ("" for the keyless loopback caller); None on entries stored before it
    was kept with them, whose reads fill it from the audit log."""


@dataclass(frozen=True)
class EntryScan:
    """A stretch of a list's entries read newest first: those kept, and the sequence number to read on
    below (0: the oldest entry was reached)."""

    entries: list[EntryRecord]
    resume_before: int


@dataclass(frozen=True)
class NewEntry:
    """An entry to store, as a change carries it: its id (chosen by the node that accepted the write), its
    fingerprints (hashes as bytes, b"" for none; the embedding as `encode_embedding` gives it, b"" for none),
    meta, a thumbnail for lists that keep them, and keypoints. Never the picture."""

    id: str
    sha256: bytes = b""
    pdq: bytes = b""
    pdq_quality: int = 0
    phash: bytes = b""
    embedding: bytes = b""
    meta: dict[str, str] = field(default_factory=dict)
    md5: bytes = b""
    thumbnail: bytes = b""
    """A small WebP of the picture (b"" for none), kept only when the list keeps thumbnails as it is applied."""
    keypoints: bytes = b""
    """The picture's ORB keypoints (`server/keypoints.py`; b"" for none): they confirm a copy the embedding is
    unsure of."""


@dataclass(frozen=True)
class AddOutcome:
    entry: EntryRecord
    duplicate: bool
    change: int  # 0 for a duplicate: nothing changed
    embedding: np.ndarray | None


@dataclass(frozen=True)
class KeyRecord:
    """An API key without its secret: `digest` is the SHA-256 of the secret."""

    id: str
    name: str
    role: str
    lists: list[str]
    digest: bytes
    created: float
    created_by: str = ""
    revoked: float = 0.0


@dataclass(frozen=True)
class AuditRecord:
    """One change: when, by which key ("" before any key existed), what, on which list and entry."""

    time: float
    key_id: str
    action: str
    list: str = ""
    entry_id: str = ""
    detail: dict[str, str] = field(default_factory=dict)


def encode_embedding(vector: np.ndarray) -> bytes:
    """An embedding as it is stored and replicated: float16, little-endian. A cosine moves by about 1e-4, and
    at 1 KiB a 512-d vector fits inside an LMDB page beside others, where 2 KiB of float32 took a 4 KiB
    overflow page."""
    return np.asarray(vector, dtype="<f2").tobytes()


def is_pdq_only(entry: EntryRecord) -> bool:
    """A PDQ hash and no embedding (an entry's model is set exactly when it has one)."""
    return bool(entry.pdq) and not entry.model


def validate_list_name(name: str) -> None:
    if not LIST_NAME.match(name):
        raise InvalidArgument(
            f"list name {name[:80]!r} is invalid: use 1-64 lowercase letters, digits, '-' or '_'", "LIST_NAME_INVALID"
        )


def validate_lists_named(names: Sequence[str]) -> None:
    """Refuse more list names than any real caller sends, before any other work is done for them."""
    if len(names) > LISTS_NAMED_MAX:
        raise InvalidArgument(
            f"{len(names):,} list names in one request; at most {LISTS_NAMED_MAX}: name fewer", "LISTS_TOO_MANY"
        )
    size = sum(len(name.encode()) for name in names)
    if size > LISTS_NAMED_MAX_BYTES:
        raise InvalidArgument(
            f"list names of {size:,} bytes in one request; at most {LISTS_NAMED_MAX_BYTES:,} "
            "(a list name has at most 64 characters)",
            "LISTS_TOO_MANY",
        )


def validate_thresholds(review: float, reject: float) -> None:
    if not (0.0 <= review <= 1.0 and 0.0 <= reject <= 1.0):
        raise InvalidArgument(
            f"thresholds must lie in [0, 1] (review {review}, reject {reject})", "THRESHOLD_OUT_OF_RANGE"
        )
    if review > reject:
        raise InvalidArgument(
            f"review threshold {review} is above reject threshold {reject}; review must be ≤ reject",
            "THRESHOLD_ORDER",
        )


def validate_description(description: str) -> None:
    # Every list record is read on every check of all lists: keep them small.
    if len(description) > DESCRIPTION_MAX_CHARS:
        raise InvalidArgument(
            f"description has {len(description):,} characters; at most {DESCRIPTION_MAX_CHARS} are kept",
            "DESCRIPTION_TOO_LONG",
        )


def validate_list_kind(kind: str) -> None:
    if kind not in LIST_KINDS:
        raise InvalidArgument(f"list kind {kind!r} is unknown; use one of {', '.join(LIST_KINDS)}", "LIST_KIND_UNKNOWN")


def validate_entry_id(entry_id: str) -> None:
    # Bytes, not characters: the id is part of an LMDB key (at most 511 bytes).
    if not entry_id.isprintable() or len(entry_id.encode()) > ENTRY_ID_MAX or entry_id != entry_id.strip():
        raise InvalidArgument(
            f"entry id {entry_id[:40]!r} is invalid: up to {ENTRY_ID_MAX} bytes (UTF-8) of printable characters, "
            "no leading or trailing spaces",
            "ENTRY_ID_INVALID",
        )


def validate_meta(meta: dict[str, str]) -> None:
    if len(meta) > META_MAX_ITEMS or sum(len(k) + len(v) for k, v in meta.items()) > META_MAX_CHARS:
        raise InvalidArgument(
            f"meta too large: at most {META_MAX_ITEMS} keys and {META_MAX_CHARS} characters in all",
            "META_TOO_LARGE",
        )

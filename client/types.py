"""Typed results of Lookalike calls, decoupled from the protobuf messages."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from client.lookalike_pb import lookalike_pb2 as pb

DECISION_NAMES = {pb.ACCEPT: "accept", pb.REVIEW: "review", pb.REJECT: "reject", pb.DECISION_UNSPECIFIED: "accept"}


@dataclass(frozen=True)
class Url:
    """An image the server fetches itself."""

    url: str


@dataclass(frozen=True)
class Base64:
    """An image as base64 text (a `data:` URI prefix is accepted)."""

    text: str


ImageInput = bytes | str | os.PathLike[str] | Url | Base64 | Any
"""bytes, a path, an http(s) URL string, `Url`, `Base64`, or a PIL image."""


def image_message(image: ImageInput) -> pb.Image:
    """The protobuf `Image` for whatever the caller handed us (PIL is only duck-typed)."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, bytes | bytearray | memoryview):
        return pb.Image(data=bytes(image))
    if isinstance(image, Url):
        return pb.Image(url=image.url)
    if isinstance(image, Base64):
        return pb.Image(base64=image.text)
    if isinstance(image, str) and image.lower().startswith(("http://", "https://")):
        return pb.Image(url=image)
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as handle:
            return pb.Image(data=handle.read())
    if hasattr(image, "save") and hasattr(image, "mode"):
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return pb.Image(data=buffer.getvalue())
    raise TypeError(f"cannot send {type(image).__name__} as an image: pass bytes, a path, a URL or a PIL image")


def _time(stamp: Any) -> datetime:
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


@dataclass(frozen=True)
class Hashes:
    sha256: str
    pdq: str
    pdq_quality: int
    phash: str
    md5: str = ""

    @classmethod
    def from_pb(cls, message: pb.Hashes) -> Hashes:
        return cls(message.sha256, message.pdq, message.pdq_quality, message.phash, message.md5)


@dataclass(frozen=True)
class ListInfo:
    name: str
    description: str
    review_threshold: float
    reject_threshold: float
    model: str
    entry_count: int
    created: datetime
    dihedral: bool = True
    """Checks also match PDQ's rotations and mirrors of the query."""

    @classmethod
    def from_pb(cls, message: pb.ListInfo) -> ListInfo:
        return cls(
            message.name,
            message.description,
            message.review_threshold,
            message.reject_threshold,
            message.model,
            message.entry_count,
            _time(message.created),
            message.dihedral,
        )


@dataclass(frozen=True)
class AddResult:
    list: str
    id: str
    sha256: str
    duplicate: bool
    hashes: Hashes

    @classmethod
    def from_pb(cls, message: pb.AddEntryResponse) -> AddResult:
        return cls(message.list, message.id, message.sha256, message.duplicate, Hashes.from_pb(message.hashes))


@dataclass(frozen=True)
class Entry:
    list: str
    id: str
    hashes: Hashes
    meta: dict[str, str]
    created: datetime
    model: str
    embedding: bytes = field(default=b"", repr=False)
    """float32 little-endian; only from an export with embeddings."""

    @classmethod
    def from_pb(cls, message: pb.Entry) -> Entry:
        return cls(
            message.list,
            message.id,
            Hashes.from_pb(message.hashes),
            dict(message.meta),
            _time(message.created),
            message.model,
            message.embedding,
        )


@dataclass(frozen=True)
class Evidence:
    exact_sha256: bool
    pdq_distance: int | None
    embedding_similarity: float | None
    model: str
    signals: tuple[str, ...]
    exact_md5: bool = False

    @classmethod
    def from_pb(cls, message: pb.Evidence) -> Evidence:
        return cls(
            message.exact_sha256,
            message.pdq_distance if message.HasField("pdq_distance") else None,
            message.embedding_similarity if message.HasField("embedding_similarity") else None,
            message.model,
            tuple(message.signals),
            message.exact_md5,
        )


@dataclass(frozen=True)
class Match:
    list: str
    id: str
    meta: dict[str, str]
    score: float
    evidence: Evidence
    decision: str

    @classmethod
    def from_pb(cls, message: pb.Match) -> Match:
        return cls(
            message.list,
            message.id,
            dict(message.meta),
            message.score,
            Evidence.from_pb(message.evidence),
            DECISION_NAMES[message.decision],
        )


@dataclass(frozen=True)
class CheckResult:
    """A check's reply: the decision, the matches best first, and the image's hashes."""

    id: str
    timestamp: datetime
    sha256: str
    decision: str
    reject: bool
    review: bool
    matches: list[Match]
    meta: dict[str, str]
    hashes: Hashes
    raw: pb.CheckResponse = field(repr=False, compare=False)

    @classmethod
    def from_pb(cls, message: pb.CheckResponse) -> CheckResult:
        return cls(
            message.id,
            _time(message.request.timestamp),
            message.sha256,
            DECISION_NAMES[message.decision],
            message.suggested_actions.reject,
            message.suggested_actions.review,
            [Match.from_pb(m) for m in message.matches],
            dict(message.meta),
            Hashes.from_pb(message.hashes),
            message,
        )


@dataclass(frozen=True)
class KeyInfo:
    """An API key without its secret; `lists` empty means any list, `revoked` None means valid."""

    id: str
    name: str
    role: str
    lists: list[str]
    created: datetime
    created_by: str
    revoked: datetime | None

    @classmethod
    def from_pb(cls, message: pb.KeyInfo) -> KeyInfo:
        return cls(
            message.id,
            message.name,
            message.role,
            list(message.lists),
            _time(message.created),
            message.created_by,
            _time(message.revoked) if message.HasField("revoked") else None,
        )


@dataclass(frozen=True)
class NewKey:
    """A key just created: `secret` is what to send, and is shown only this once."""

    info: KeyInfo
    secret: str = field(repr=False)


@dataclass(frozen=True)
class AuditRecord:
    """One change: when, by which key ("" before keys existed), what, on which list and entry."""

    time: datetime
    key_id: str
    action: str
    list: str
    entry_id: str
    detail: dict[str, str]

    @classmethod
    def from_pb(cls, message: pb.AuditRecord) -> AuditRecord:
        return cls(
            _time(message.time), message.key_id, message.action, message.list, message.entry_id, dict(message.detail)
        )

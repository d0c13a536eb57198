"""Typed results of Lookalike calls, decoupled from the protobuf messages."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lookalike.client.errors import LookalikeError
from lookalike.client.lookalike_pb import lookalike_pb2 as pb

DECISION_NAMES = {pb.ACCEPT: "accept", pb.REVIEW: "review", pb.REJECT: "reject", pb.DECISION_UNSPECIFIED: "accept"}
CHECK_STATUS_NAMES = {
    pb.CHECK_PENDING: "pending",
    pb.CHECK_DONE: "done",
    pb.CHECK_FAILED: "failed",
    pb.CHECK_STATUS_UNSPECIFIED: "done",  # servers before deferred checks answered only finished ones
}
DELIVERY_STATE_NAMES = {
    pb.DELIVERY_PENDING: "pending",
    pb.DELIVERY_DELIVERED: "delivered",
    pb.DELIVERY_FAILED: "failed",
    pb.DELIVERY_STATE_UNSPECIFIED: "",
}
DECISIONS = {"accept": pb.ACCEPT, "review": pb.REVIEW, "reject": pb.REJECT}
VERDICTS = {"false_positive": pb.FALSE_POSITIVE, "missed_duplicate": pb.MISSED_DUPLICATE, "confirmed": pb.CONFIRMED}
VERDICT_NAMES = {value: name for name, value in VERDICTS.items()} | {pb.VERDICT_UNSPECIFIED: ""}


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
class GuardedEntry:
    """An entry under flood guard: it matched far more often than usual, so its rejects go to review."""

    id: str
    since: datetime
    recent_matches: float
    usual_matches: float

    @classmethod
    def from_pb(cls, message: pb.GuardedEntry) -> GuardedEntry:
        return cls(message.id, _time(message.since), message.recent_matches, message.usual_matches)


@dataclass(frozen=True)
class CheckCounts:
    """How many checks came to each decision."""

    accept: int = 0
    review: int = 0
    reject: int = 0

    @classmethod
    def from_pb(cls, message: pb.CheckCounts) -> CheckCounts:
        return cls(message.accept, message.review, message.reject)


@dataclass(frozen=True)
class HourlyChecks:
    """One clock hour's checks (`start`: the hour's beginning)."""

    start: datetime
    counts: CheckCounts

    @classmethod
    def from_pb(cls, message: pb.HourlyChecks) -> HourlyChecks:
        return cls(_time(message.start), CheckCounts.from_pb(message.counts))


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
    kind: str = "disallow"
    guarded: list[GuardedEntry] = field(default_factory=list)
    checks_last_day: CheckCounts = CheckCounts()
    """Checks that covered the list in the last 24 hours, by the decision the list gave on its own."""
    thumbnails: bool = False
    """Pictures added keep a small thumbnail (for the dashboard); off: no picture is kept."""
    consistency_token: str = ""
    """Set on a create's or update's reply: a check with it as `after` (on any node) sees the change."""
    keypoints: bool = True
    """Pictures added keep their keypoints, which confirm a copy the embedding is unsure of (sent to review)."""

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
            message.kind or "disallow",
            [GuardedEntry.from_pb(g) for g in message.guarded],
            CheckCounts.from_pb(message.checks_last_day),
            message.thumbnails,
            message.consistency_token,
            message.keypoints,
        )


@dataclass(frozen=True)
class AddResult:
    list: str
    id: str
    sha256: str
    duplicate: bool
    hashes: Hashes
    consistency_token: str = ""
    """A check with it as `after` (on any node of a cluster) sees this entry."""

    @classmethod
    def from_pb(cls, message: pb.AddEntryResponse) -> AddResult:
        hashes = Hashes.from_pb(message.hashes)
        return cls(message.list, message.id, message.sha256, message.duplicate, hashes, message.consistency_token)


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
    guard: GuardedEntry | None = None
    added_by: str = ""
    """Id of the key that added it ("" for the keyless loopback caller); from `get_entry` and `entries`."""

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
            GuardedEntry.from_pb(message.guard) if message.HasField("guard") else None,
            message.added_by,
        )


@dataclass(frozen=True)
class EntryPage:
    """One page of a list's entries, newest first; pass `next_page_token` for the next ("" : none)."""

    entries: list[Entry]
    next_page_token: str

    @classmethod
    def from_pb(cls, message: pb.ListEntriesResponse) -> EntryPage:
        return cls([Entry.from_pb(entry) for entry in message.entries], message.next_page_token)


@dataclass(frozen=True)
class Box:
    """A rectangle in a picture's pixels as shown (its EXIF turn applied), from the top-left corner."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class View:
    """Where in the checked picture a signal found the entry: "whole" (the picture itself), "part" (a picture
    found inside it) or "frame" (another frame of an animation)."""

    kind: str
    box: Box
    frame: int = 0
    """The animation frame (0: the first)."""

    @classmethod
    def from_pb(cls, message: pb.View) -> View:
        box = message.box
        return cls(message.kind, Box(box.x, box.y, box.width, box.height), message.frame)


@dataclass(frozen=True)
class Evidence:
    exact_sha256: bool
    pdq_distance: int | None
    embedding_similarity: float | None
    model: str
    signals: tuple[str, ...]
    exact_md5: bool = False
    pdq_view: View | None = None
    embedding_view: View | None = None

    @classmethod
    def from_pb(cls, message: pb.Evidence) -> Evidence:
        return cls(
            message.exact_sha256,
            message.pdq_distance if message.HasField("pdq_distance") else None,
            message.embedding_similarity if message.HasField("embedding_similarity") else None,
            message.model,
            tuple(message.signals),
            message.exact_md5,
            View.from_pb(message.pdq_view) if message.HasField("pdq_view") else None,
            View.from_pb(message.embedding_view) if message.HasField("embedding_view") else None,
        )


@dataclass(frozen=True)
class Match:
    list: str
    id: str
    meta: dict[str, str]
    score: float
    evidence: Evidence
    decision: str
    list_kind: str = "disallow"
    guarded: bool = False

    @classmethod
    def from_pb(cls, message: pb.Match) -> Match:
        return cls(
            message.list,
            message.id,
            dict(message.meta),
            message.score,
            Evidence.from_pb(message.evidence),
            DECISION_NAMES[message.decision],
            message.list_kind or "disallow",
            message.guarded,
        )


@dataclass(frozen=True)
class Downgrade:
    """Why a decision is milder than the matches alone would make it: `cause` is "allow_list" or "flood_guard"."""

    cause: str
    list: str
    id: str
    before: str
    after: str
    reason: str

    @classmethod
    def from_pb(cls, message: pb.Downgrade) -> Downgrade:
        return cls(
            message.cause,
            message.list,
            message.id,
            DECISION_NAMES[message.before],
            DECISION_NAMES[message.after],
            message.reason,
        )


@dataclass(frozen=True)
class CheckResult:
    """A check's reply: the decision, the matches best first, and the image's hashes.

    A deferred check answers with `status` "pending" and only its `id`; `get_check(id)` gives the result.
    """

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
    status: str = "done"
    downgrades: list[Downgrade] = field(default_factory=list)

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
            CHECK_STATUS_NAMES[message.status],
            [Downgrade.from_pb(d) for d in message.downgrades],
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """A webhook's state: `state` is "pending" (retried with backoff), "delivered" or "failed" (gave up)."""

    url: str
    state: str
    attempts: int
    last_error: str
    last_status: int
    next_attempt: datetime | None
    delivered: datetime | None

    @classmethod
    def from_pb(cls, message: pb.WebhookDelivery) -> WebhookDelivery:
        return cls(
            message.url,
            DELIVERY_STATE_NAMES[message.state],
            message.attempts,
            message.last_error,
            message.last_status,
            _time(message.next_attempt) if message.HasField("next_attempt") else None,
            _time(message.delivered) if message.HasField("delivered") else None,
        )


@dataclass(frozen=True)
class CheckRecord:
    """A stored check: `status` "pending", "done" (with `result`) or "failed" (with `error`: code, message, reason)."""

    id: str
    status: str
    result: CheckResult | None
    error: dict[str, str] | None
    submitted: datetime
    completed: datetime | None
    expires: datetime | None
    delivery: WebhookDelivery | None
    owner: str = ""
    """The key that made it (set in `list_checks` answers)."""

    @classmethod
    def from_pb(cls, message: pb.CheckRecord) -> CheckRecord:
        error = message.error
        return cls(
            message.id,
            CHECK_STATUS_NAMES[message.status],
            CheckResult.from_pb(message.result) if message.HasField("result") else None,
            {"code": error.code, "message": error.message, "reason": error.reason}
            if message.HasField("error")
            else None,
            _time(message.submitted),
            _time(message.completed) if message.HasField("completed") else None,
            _time(message.expires) if message.HasField("expires") else None,
            WebhookDelivery.from_pb(message.delivery) if message.HasField("delivery") else None,
            message.owner,
        )


@dataclass(frozen=True)
class Feedback:
    """An operator's verdict ("false_positive", "missed_duplicate", "confirmed") on one entry of one check."""

    time: datetime
    key_id: str
    check_id: str
    list: str
    entry_id: str
    verdict: str
    note: str
    score: float | None
    decision: str

    @classmethod
    def from_pb(cls, message: pb.Feedback) -> Feedback:
        return cls(
            _time(message.time),
            message.key_id,
            message.check_id,
            message.list,
            message.entry_id,
            VERDICT_NAMES[message.verdict],
            message.note,
            message.score if message.HasField("score") else None,
            DECISION_NAMES[message.decision],
        )


@dataclass(frozen=True)
class ThresholdAdvice:
    current: float
    recommended: float
    errors_avoided: int
    errors_left: int
    confirmed_affected: int
    checks_affected: int

    @classmethod
    def from_pb(cls, message: pb.ThresholdAdvice) -> ThresholdAdvice:
        return cls(
            message.current,
            message.recommended,
            message.errors_avoided,
            message.errors_left,
            message.confirmed_affected,
            message.checks_affected,
        )


@dataclass(frozen=True)
class Calibration:
    """Recommended review and reject thresholds of a list, what each fixes and costs, and whether applied."""

    list: str
    review: ThresholdAdvice
    reject: ThresholdAdvice
    checks_seen: int
    feedback_seen: int
    applied: bool
    notes: tuple[str, ...]
    info: ListInfo

    @classmethod
    def from_pb(cls, message: pb.CalibrateResponse) -> Calibration:
        return cls(
            message.list,
            ThresholdAdvice.from_pb(message.review),
            ThresholdAdvice.from_pb(message.reject),
            message.checks_seen,
            message.feedback_seen,
            message.applied,
            tuple(message.notes),
            ListInfo.from_pb(message.info),
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
    consistency_token: str = ""
    """Set on a revoke's reply: a check with it as `after` (on any node) is past the revocation."""

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
            message.consistency_token,
        )


@dataclass(frozen=True)
class ImportSummary:
    """What `import_entries` did: entries added, already listed (duplicates), and those refused,
    each as (its position among the entries given, the error)."""

    list: str
    added: int
    duplicates: int
    errors: tuple[tuple[int, LookalikeError], ...] = ()

    @property
    def failed(self) -> int:
        return len(self.errors)


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

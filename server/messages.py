"""Protobuf messages from and to domain objects, for the gRPC boundary (and any front speaking
protobuf's JSON mapping, such as the webhook bodies rendered here).

Requests become the domain objects operations take (`request → domain`); what operations return
becomes the reply messages (`domain → message`). Image bytes are taken from a request once and
passed on as they are.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.webhooks import CHECK_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from lookalike.server.check_index import DecisionCounts, HourCounts
from lookalike.server.checks import StoredCheck
from lookalike.server.feedback import CONFIRMED, FALSE_POSITIVE, MISSED_DUPLICATE, ThresholdAdvice
from lookalike.server.fingerprint import Hashes, Place
from lookalike.server.hashes import MD5, PDQ, PHASH, SHA256, HashAdd
from lookalike.server.operations.checking import CheckPage, CheckQuery, CheckView, HashCheck, NewCheck
from lookalike.server.operations.entries import EntryPage, EntryQuery, ListedEntry, NewPicture
from lookalike.server.operations.judging import CalibrationOutcome, FeedbackSubmission
from lookalike.server.operations.lists import ListChange, ListSpec, ListState
from lookalike.server.operations.types import ImageSource, PageRequest
from lookalike.server.records import AddOutcome, AuditRecord, EntryRecord, KeyRecord
from lookalike.server.service import REJECT, REVIEW, CheckResult, Downgrade, Match
from lookalike.server.storage.feedback import FeedbackRecord
from lookalike.server.storage.flood import Guard
from lookalike.server.storage.outbox import Delivery

DECISIONS = {"accept": pb.ACCEPT, "review": pb.REVIEW, "reject": pb.REJECT}
CHECK_STATUSES = {"pending": pb.CHECK_PENDING, "done": pb.CHECK_DONE, "failed": pb.CHECK_FAILED}
DELIVERY_STATES = {"pending": pb.DELIVERY_PENDING, "delivered": pb.DELIVERY_DELIVERED, "failed": pb.DELIVERY_FAILED}
VERDICTS = {pb.FALSE_POSITIVE: FALSE_POSITIVE, pb.MISSED_DUPLICATE: MISSED_DUPLICATE, pb.CONFIRMED: CONFIRMED}
VERDICT_MESSAGES = {name: value for value, name in VERDICTS.items()}
DECISION_NAMES = {value: name for name, value in DECISIONS.items()}


def optional(message: Any, name: str) -> Any:
    """A field marked `optional` in the proto: its value when set, else None."""
    return getattr(message, name) if message.HasField(name) else None


# Requests → domain ------------------------------------------------------------------


def image_source(image: pb.Image) -> ImageSource:
    kind = image.WhichOneof("source")
    return ImageSource(kind, getattr(image, kind) if kind else b"")


def list_spec(request: pb.CreateListRequest) -> ListSpec:
    return ListSpec(
        request.name,
        request.description,
        optional(request, "review_threshold"),
        optional(request, "reject_threshold"),
        request.model,
        dihedral=request.dihedral if request.HasField("dihedral") else True,
        kind=request.kind,
        thumbnails=request.thumbnails,
        keypoints=request.keypoints if request.HasField("keypoints") else True,
    )


def list_change(request: pb.UpdateListRequest) -> ListChange:
    return ListChange(
        request.name,
        optional(request, "description"),
        optional(request, "review_threshold"),
        optional(request, "reject_threshold"),
        optional(request, "dihedral"),
        optional(request, "thumbnails"),
        optional(request, "keypoints"),
    )


def new_picture(request: pb.AddEntryRequest) -> NewPicture:
    return NewPicture(image_source(request.image), dict(request.meta), request.id)


def hash_add(message: pb.HashEntry) -> HashAdd:
    return HashAdd(
        id=message.id,
        pdq=message.pdq,
        pdq_quality=optional(message, "pdq_quality"),
        md5=message.md5,
        sha256=message.sha256,
        phash=message.phash,
        meta=dict(message.meta),
        embedding=message.embedding,
        model=message.model,
    )


def entry_query(request: pb.ListEntriesRequest) -> EntryQuery:
    return EntryQuery(request.q, request.page_size, request.page_token)


def new_check(request: pb.CheckRequest) -> NewCheck:
    return NewCheck(
        image_source(request.image),
        list(request.lists),
        dict(request.meta),
        request.top_k,
        optional(request, "min_score"),
        request.request_id,
        request.callback_url,
        request.defer,
        request.after,
    )


def hash_check(request: pb.CheckHashesRequest) -> HashCheck:
    return HashCheck(
        request.pdq,
        optional(request, "pdq_quality"),
        request.md5,
        request.sha256,
        list(request.lists),
        dict(request.meta),
        request.top_k,
        optional(request, "min_score"),
        request.request_id,
        request.after,
    )


def check_query(request: pb.ListChecksRequest) -> CheckQuery:
    return CheckQuery(
        DECISION_NAMES.get(request.decision), request.page_size, request.page_token, optional(request, "owner")
    )


def page_request(request: pb.ListAuditRequest | pb.ListFeedbackRequest) -> PageRequest:
    since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else 0.0
    return PageRequest(request.list, since, request.limit, request.page_token)


def feedback_submission(request: pb.SubmitFeedbackRequest) -> FeedbackSubmission:
    return FeedbackSubmission(
        request.check_id,
        VERDICTS.get(request.verdict),
        request.entry_id,
        request.list,
        request.note,
        optional(request, "owner"),
    )


# Domain → messages -------------------------------------------------------------------


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def list_info(state: ListState) -> pb.ListInfo:
    record = state.record
    return pb.ListInfo(
        name=record.name,
        description=record.description,
        review_threshold=record.review_threshold,
        reject_threshold=record.reject_threshold,
        model=record.model,
        entry_count=record.entry_count,
        created=timestamp(record.created),
        dihedral=record.dihedral,
        kind=record.kind,
        guarded=[guard_message(guard) for guard in state.guarded],
        checks_last_day=counts_message(state.checks_last_day),
        thumbnails=record.thumbnails,
        keypoints=record.keypoints,
    )


def counts_message(counts: DecisionCounts) -> pb.CheckCounts:
    return pb.CheckCounts(accept=counts.accept, review=counts.review, reject=counts.reject)


def activity_message(hours: list[HourCounts]) -> pb.GetCheckActivityResponse:
    return pb.GetCheckActivityResponse(
        hours=[pb.HourlyChecks(start=timestamp(hour.start), counts=counts_message(hour.counts)) for hour in hours]
    )


def guard_message(guard: Guard) -> pb.GuardedEntry:
    return pb.GuardedEntry(
        id=guard.entry_id, since=timestamp(guard.since), recent_matches=guard.recent, usual_matches=guard.usual
    )


def hashes_message(hashes: Hashes | EntryRecord) -> pb.Hashes:
    """A picture's (or an entry's) hashes, as hex."""
    return pb.Hashes(
        sha256=SHA256.format(hashes.sha256),
        pdq=PDQ.format(hashes.pdq),
        pdq_quality=hashes.pdq_quality,
        phash=PHASH.format(hashes.phash),
        md5=MD5.format(hashes.md5),
    )


def entry_message(
    list_name: str, entry: EntryRecord, embedding: bytes | None = None, guard: Guard | None = None
) -> pb.Entry:
    message = pb.Entry(
        list=list_name,
        id=entry.id,
        hashes=hashes_message(entry),
        meta=entry.meta,
        created=timestamp(entry.created),
        model=entry.model,
        embedding=embedding or b"",
        added_by=entry.added_by or "",
    )
    if guard is not None:
        message.guard.CopyFrom(guard_message(guard))
    return message


def listed_entry(listed: ListedEntry) -> pb.Entry:
    return entry_message(listed.list, listed.entry, guard=listed.guard)


def entry_page(page: EntryPage) -> pb.ListEntriesResponse:
    return pb.ListEntriesResponse(
        entries=[listed_entry(listed) for listed in page.entries], next_page_token=page.next_page_token
    )


def view_message(place: Place) -> pb.View:
    left, top, right, bottom = place.box
    return pb.View(
        kind=place.kind, box=pb.Box(x=left, y=top, width=right - left, height=bottom - top), frame=place.frame
    )


def match_message(match: Match) -> pb.Match:
    evidence = pb.Evidence(
        exact_sha256=match.evidence.exact_sha256,
        exact_md5=match.evidence.exact_md5,
        model=match.evidence.model,
        signals=match.evidence.signals(),
    )
    if match.evidence.pdq_distance is not None:
        evidence.pdq_distance = match.evidence.pdq_distance
    if match.evidence.embedding_similarity is not None:
        evidence.embedding_similarity = match.evidence.embedding_similarity
    if match.evidence.pdq_place is not None:
        evidence.pdq_view.CopyFrom(view_message(match.evidence.pdq_place))
    if match.evidence.embedding_place is not None:
        evidence.embedding_view.CopyFrom(view_message(match.evidence.embedding_place))
    return pb.Match(
        list=match.list,
        id=match.entry.id,
        meta=match.entry.meta,
        score=match.score,
        evidence=evidence,
        decision=DECISIONS[match.decision],
        list_kind=match.list_kind,
        guarded=match.guarded,
    )


def downgrade_message(downgrade: Downgrade) -> pb.Downgrade:
    return pb.Downgrade(
        cause=downgrade.cause,
        list=downgrade.list,
        id=downgrade.entry_id,
        before=DECISIONS[downgrade.before],
        after=DECISIONS[downgrade.after],
        reason=downgrade.reason,
    )


def check_response(result: CheckResult) -> pb.CheckResponse:
    return pb.CheckResponse(
        id=result.request_id,
        request=pb.RequestInfo(request_id=result.request_id, timestamp=timestamp(result.timestamp)),
        sha256=SHA256.format(result.hashes.sha256),
        decision=DECISIONS[result.decision],
        suggested_actions=pb.SuggestedActions(reject=result.decision == REJECT, review=result.decision == REVIEW),
        matches=[match_message(m) for m in result.matches],
        meta=result.meta,
        hashes=hashes_message(result.hashes),
        status=pb.CHECK_DONE,
        downgrades=[downgrade_message(d) for d in result.downgrades],
    )


def pending_response(check: StoredCheck) -> pb.CheckResponse:
    """The immediate answer to a deferred check: its id, and that it is pending (or done, when resubmitted)."""
    if check.result is not None:
        return check_response(check.result)
    meta = check.order.meta if check.order is not None else {}
    return pb.CheckResponse(
        id=check.id,
        request=pb.RequestInfo(request_id=check.id, timestamp=timestamp(check.submitted)),
        meta=meta,
        status=CHECK_STATUSES[check.status],
    )


def check_answer(answer: CheckResult | StoredCheck) -> pb.CheckResponse:
    """A check's reply: its result, or (deferred) the pending check."""
    return check_response(answer) if isinstance(answer, CheckResult) else pending_response(answer)


def delivery_message(delivery: Delivery) -> pb.WebhookDelivery:
    message = pb.WebhookDelivery(
        url=delivery.url,
        state=DELIVERY_STATES[delivery.state],
        attempts=delivery.attempts,
        last_error=delivery.last_error,
        last_status=delivery.last_status,
    )
    if delivery.state == "pending":
        message.next_attempt.CopyFrom(timestamp(delivery.next_attempt))
    if delivery.delivered:
        message.delivered.CopyFrom(timestamp(delivery.delivered))
    return message


def check_record_message(check: StoredCheck, delivery: Delivery | None = None) -> pb.CheckRecord:
    message = pb.CheckRecord(id=check.id, status=CHECK_STATUSES[check.status], submitted=timestamp(check.submitted))
    if check.result is not None:
        message.result.CopyFrom(check_response(check.result))
    if check.error is not None:
        message.error.CopyFrom(pb.ItemError(**check.error))
    if check.completed:
        message.completed.CopyFrom(timestamp(check.completed))
    if check.expires:
        message.expires.CopyFrom(timestamp(check.expires))
    if delivery is not None:
        message.delivery.CopyFrom(delivery_message(delivery))
    return message


def check_view(view: CheckView) -> pb.CheckRecord:
    return check_record_message(view.check, view.delivery)


def check_page(page: CheckPage) -> pb.ListChecksResponse:
    checks = []
    for check in page.checks:
        message = check_record_message(check)
        message.owner = check.owner
        checks.append(message)
    return pb.ListChecksResponse(checks=checks, next_page_token=page.next_page_token)


def webhook_body(check: StoredCheck) -> bytes:
    """What a webhook POSTs: the check record as protobuf JSON (field names as in the .proto)."""
    message = check_record_message(check)
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None).encode()


def webhook_headers(secret: str, check_id: str, body: bytes) -> dict[str, str]:
    """The headers of one webhook attempt: signed afresh, as `lookalike.client.webhooks` verifies them."""
    sent = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: sent,
        SIGNATURE_HEADER: sign(secret, sent, body),
        CHECK_ID_HEADER: check_id,
    }


def feedback_message(record: FeedbackRecord) -> pb.Feedback:
    message = pb.Feedback(
        time=timestamp(record.time),
        key_id=record.key_id,
        check_id=record.check_id,
        list=record.list,
        entry_id=record.entry_id,
        verdict=VERDICT_MESSAGES[record.verdict],
        note=record.note,
        decision=DECISIONS.get(record.decision, pb.DECISION_UNSPECIFIED),
    )
    if record.score is not None:
        message.score = record.score
    return message


def advice_message(advice: ThresholdAdvice) -> pb.ThresholdAdvice:
    return pb.ThresholdAdvice(
        current=advice.current,
        recommended=advice.recommended,
        errors_avoided=advice.errors_avoided,
        errors_left=advice.errors_left,
        confirmed_affected=advice.confirmed_affected,
        checks_affected=advice.checks_affected,
    )


def calibration_message(outcome: CalibrationOutcome) -> pb.CalibrateResponse:
    calibration = outcome.calibration
    return pb.CalibrateResponse(
        list=calibration.list_name,
        review=advice_message(calibration.review),
        reject=advice_message(calibration.reject),
        checks_seen=calibration.checks_seen,
        feedback_seen=calibration.feedback_seen,
        applied=outcome.applied,
        notes=calibration.notes,
        info=list_info(outcome.list),
    )


def add_response(list_name: str, outcome: AddOutcome, token: str = "") -> pb.AddEntryResponse:
    entry = outcome.entry
    return pb.AddEntryResponse(
        list=list_name,
        id=entry.id,
        sha256=SHA256.format(entry.sha256),
        duplicate=outcome.duplicate,
        hashes=hashes_message(entry),
        consistency_token=token,
    )


def key_info(record: KeyRecord) -> pb.KeyInfo:
    info = pb.KeyInfo(
        id=record.id,
        name=record.name,
        role=record.role,
        lists=record.lists,
        created=timestamp(record.created),
        created_by=record.created_by,
    )
    if record.revoked:
        info.revoked.CopyFrom(timestamp(record.revoked))
    return info


def audit_message(record: AuditRecord) -> pb.AuditRecord:
    return pb.AuditRecord(
        time=timestamp(record.time),
        key_id=record.key_id,
        action=record.action,
        list=record.list,
        entry_id=record.entry_id,
        detail=record.detail,
    )

"""The gRPC servicer: protobuf in, service calls, protobuf out; errors mapped in one place."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lookalike.client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LookalikeError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.server.auth import ADMIN, Access, Action, Caller
from lookalike.server.checks import DONE, CheckLedger, CheckOrder, StoredCheck, validate_check_id
from lookalike.server.config import ServerConfig
from lookalike.server.feedback import (
    CONFIRMED,
    FALSE_POSITIVE,
    MISSED_DUPLICATE,
    Calibration,
    FeedbackBook,
    FeedbackRecord,
    ThresholdAdvice,
    calibrate,
    validate_note,
)
from lookalike.server.fetch import check_url
from lookalike.server.fingerprint import Hashes
from lookalike.server.flood import Guard
from lookalike.server.hashes import HashAdd
from lookalike.server.service import (
    REJECT,
    REVIEW,
    AddRequest,
    CheckResult,
    Downgrade,
    LookalikeService,
    Match,
    raise_if_abandoned,
)
from lookalike.server.slots import PerKeyLimit
from lookalike.server.sources import image_bytes
from lookalike.server.store import (
    LIST_KIND_ALLOW,
    AddOutcome,
    AuditRecord,
    EntryRecord,
    KeyRecord,
    ListRecord,
    validate_lists_named,
)
from lookalike.server.webhooks import Delivery

log = logging.getLogger(__name__)
ERROR_DOMAIN = "lookalike.v1"
READER_POLL_SECONDS = 0.1
"""How often a stream's reader, blocked on a full queue, checks whether the stream has ended."""
SERVICE = pb.DESCRIPTOR.services_by_name["Lookalike"].full_name
DECISIONS = {"accept": pb.ACCEPT, "review": pb.REVIEW, "reject": pb.REJECT}
CHECK_STATUSES = {"pending": pb.CHECK_PENDING, "done": pb.CHECK_DONE, "failed": pb.CHECK_FAILED}
DELIVERY_STATES = {"pending": pb.DELIVERY_PENDING, "delivered": pb.DELIVERY_DELIVERED, "failed": pb.DELIVERY_FAILED}
VERDICTS = {pb.FALSE_POSITIVE: FALSE_POSITIVE, pb.MISSED_DUPLICATE: MISSED_DUPLICATE, pb.CONFIRMED: CONFIRMED}
VERDICT_MESSAGES = {name: value for value, name in VERDICTS.items()}
T = TypeVar("T")
R = TypeVar("R")
AUDIT_PAGE_DEFAULT = 1000
AUDIT_PAGE_MAX = 10_000


MESSAGE_MAX_BYTES = 1000
"""Messages may quote what the caller sent; gRPC drops a call whose trailers pass 16 KiB (the
message travels twice, percent-encoded and in the status details), so longer ones are cut."""


def _bounded(message: str) -> str:
    encoded = message.encode()
    if len(encoded) <= MESSAGE_MAX_BYTES:
        return message
    return encoded[: MESSAGE_MAX_BYTES - 3].decode(errors="ignore") + "..."


def _status_for(error: LookalikeError) -> status_pb2.Status:
    code = getattr(code_pb2, error.code, code_pb2.UNKNOWN)
    detail = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    status = status_pb2.Status(code=code, message=_bounded(error.message))
    status.details.add().Pack(detail)
    return status


def _item_error(error: Exception) -> pb.ItemError:
    if isinstance(error, LookalikeError):
        return pb.ItemError(code=error.code, message=_bounded(error.message), reason=error.reason)
    log.exception("item failed", exc_info=error)
    return pb.ItemError(code="INTERNAL", message="internal error; see the server log", reason="INTERNAL")


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    """End the call with the error's status code and reason; an unexpected error is
    logged under an incident id and reported as INTERNAL without its details."""
    if isinstance(error, LookalikeError):
        context.abort_with_status(rpc_status.to_status(_status_for(error)))
    incident = uuid.uuid4().hex[:12]
    log.error("%s failed (incident %s)", method, incident, exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the server log")


@contextmanager
def _on_behalf_of(context: grpc.ServicerContext) -> Iterator[None]:
    """Let the service ask, before each CPU-heavy step, whether the caller still waits."""

    def still_wanted() -> None:
        if context.time_remaining() <= 0:
            raise DeadlineExceeded("the client's deadline passed before the image was processed", "DEADLINE_PASSED")
        if not context.is_active():
            raise Cancelled("the client cancelled the call", "CANCELLED")

    token = raise_if_abandoned.set(still_wanted)
    try:
        yield
    finally:
        raise_if_abandoned.reset(token)


class _Malformed:
    """Stands in for request bytes that do not parse as the method's message (invalid UTF-8 in a
    string, a truncated field), so the call can answer INVALID_ARGUMENT: gRPC itself says INTERNAL."""


MALFORMED = _Malformed()


def _malformed_error() -> InvalidArgument:
    return InvalidArgument(
        "request is not a valid lookalike.v1 message for this method (bad protobuf bytes or invalid UTF-8)",
        "REQUEST_MALFORMED",
    )


class MalformedRequestInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Gives Lookalike's methods a deserializer that returns MALFORMED instead of raising."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}  # per method: its handler never changes, so wrap it once

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        wrapped = self._handlers.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        parse = getattr(handler, "request_deserializer", None)
        if parse is None or not details.method.startswith(f"/{SERVICE}/"):
            return handler

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception:  # noqa: BLE001 - any parse failure is the caller's bad bytes
                return MALFORMED

        wrapped = self._handlers[details.method] = handler._replace(request_deserializer=tolerant)
        return wrapped


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Map domain errors to status codes with ErrorInfo; never echo internal errors."""

    @functools.wraps(method)
    def wrapper(self: LookalikeServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if request is MALFORMED:
                raise _malformed_error()
            with _on_behalf_of(context):
                return method(self, request, context)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status code
            _abort(context, error, method.__name__)

    return wrapper


def stream_rpc(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """`rpc` for methods that yield: errors before or between items end the stream cleanly."""

    @functools.wraps(method)
    def wrapper(self: LookalikeServicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            if request is MALFORMED:  # a single request (an export) that did not parse
                raise _malformed_error()
            yield from method(self, request, context)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status code
            _abort(context, error, method.__name__)

    return wrapper


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def list_info(record: ListRecord, guarded: Iterable[Guard] = ()) -> pb.ListInfo:
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
        guarded=[guard_message(guard) for guard in guarded],
    )


def guard_message(guard: Guard) -> pb.GuardedEntry:
    return pb.GuardedEntry(
        id=guard.entry_id, since=timestamp(guard.since), recent_matches=guard.recent, usual_matches=guard.usual
    )


def hashes_message(hashes: Hashes) -> pb.Hashes:
    return pb.Hashes(
        sha256=hashes.sha256_hex,
        pdq=hashes.pdq_hex,
        pdq_quality=hashes.pdq_quality,
        phash=hashes.phash_hex,
        md5=hashes.md5_hex,
    )


def entry_hashes(entry: EntryRecord) -> pb.Hashes:
    return pb.Hashes(
        sha256=entry.sha256, pdq=entry.pdq, pdq_quality=entry.pdq_quality, phash=entry.phash, md5=entry.md5
    )


def entry_message(
    list_name: str, entry: EntryRecord, embedding: bytes | None = None, guard: Guard | None = None
) -> pb.Entry:
    message = pb.Entry(
        list=list_name,
        id=entry.id,
        hashes=entry_hashes(entry),
        meta=entry.meta,
        created=timestamp(entry.created),
        model=entry.model,
        embedding=embedding or b"",
    )
    if guard is not None:
        message.guard.CopyFrom(guard_message(guard))
    return message


def hash_add(message: pb.HashEntry) -> HashAdd:
    return HashAdd(
        id=message.id,
        pdq=message.pdq,
        pdq_quality=_optional(message, "pdq_quality"),
        md5=message.md5,
        sha256=message.sha256,
        phash=message.phash,
        meta=dict(message.meta),
        embedding=message.embedding,
        model=message.model,
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
        sha256=result.hashes.sha256_hex,
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


def webhook_body(check: StoredCheck) -> bytes:
    """What a webhook POSTs: the check record as protobuf JSON (field names as in the .proto)."""
    message = check_record_message(check)
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None).encode()


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


def calibration_message(calibration: Calibration, applied: bool, info: pb.ListInfo) -> pb.CalibrateResponse:
    return pb.CalibrateResponse(
        list=calibration.list_name,
        review=advice_message(calibration.review),
        reject=advice_message(calibration.reject),
        checks_seen=calibration.checks_seen,
        feedback_seen=calibration.feedback_seen,
        applied=applied,
        notes=calibration.notes,
        info=info,
    )


def add_response(list_name: str, outcome: AddOutcome) -> pb.AddEntryResponse:
    entry = outcome.entry
    return pb.AddEntryResponse(
        list=list_name,
        id=entry.id,
        sha256=entry.sha256,
        duplicate=outcome.duplicate,
        hashes=entry_hashes(entry),
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


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


class LookalikeServicer(pb_grpc.LookalikeServicer):  # type: ignore[misc]
    """Thin translation layer over `LookalikeService`; every method first asks `access` who calls."""

    def __init__(
        self,
        service: LookalikeService,
        config: ServerConfig,
        executor: ThreadPoolExecutor,
        access: Access,
        *,
        checks: CheckLedger,
        feedback: FeedbackBook,
    ) -> None:
        self.service = service
        self.config = config
        self.executor = executor
        self.access = access
        self.checks = checks
        self.feedback = feedback
        self.streams = PerKeyLimit(config.max_streams_per_key)

    @contextmanager
    def _stream_place(self, caller: Caller) -> Iterator[None]:
        """Hold one of the caller's `--max-streams-per-key` places while its stream is open: a stream
        holds a worker thread for its whole life, and one key must never hold them all."""
        if not self.streams.take(caller.key_id):
            raise ResourceExhausted(
                f"{caller} already has {self.streams.limit} streams open (--max-streams-per-key): send on one "
                "of those, or open another when one has ended",
                "STREAMS_PER_KEY",
            )
        try:
            yield
        finally:
            self.streams.give_back(caller.key_id)

    def _list_info(self, record: ListRecord) -> pb.ListInfo:
        return list_info(record, self.service.flood.guarded(record.uid))

    def _image(self, image: pb.Image) -> bytes:
        kind = image.WhichOneof("source")
        return image_bytes(kind, getattr(image, kind) if kind else b"", self.config)

    # Lists ---------------------------------------------------------------

    @rpc
    def CreateList(self, request: pb.CreateListRequest, context: grpc.ServicerContext) -> pb.ListInfo:
        caller = self.access.authorize(context, "CreateList", [request.name])
        record = self.service.create_list(
            request.name,
            request.description,
            _optional(request, "review_threshold"),
            _optional(request, "reject_threshold"),
            request.model,
            actor=caller.key_id,
            dihedral=request.dihedral if request.HasField("dihedral") else True,
            kind=request.kind,
        )
        return self._list_info(record)

    @rpc
    def GetList(self, request: pb.GetListRequest, context: grpc.ServicerContext) -> pb.ListInfo:
        self.access.authorize(context, "GetList", [request.name])
        return self._list_info(self.service.store.get_list(request.name))

    @rpc
    def ListLists(self, request: pb.ListListsRequest, context: grpc.ServicerContext) -> pb.ListListsResponse:
        caller = self.access.authorize(context, "ListLists")
        visible = [r for r in self.service.store.lists() if caller.may_use(r.name)]
        return pb.ListListsResponse(lists=[self._list_info(r) for r in sorted(visible, key=lambda r: r.name)])

    @rpc
    def UpdateList(self, request: pb.UpdateListRequest, context: grpc.ServicerContext) -> pb.ListInfo:
        caller = self.access.authorize(context, "UpdateList", [request.name])
        record = self.service.store.update_list(
            request.name,
            _optional(request, "description"),
            _optional(request, "review_threshold"),
            _optional(request, "reject_threshold"),
            actor=caller.key_id,
            dihedral=_optional(request, "dihedral"),
        )
        return self._list_info(record)

    @rpc
    def DeleteList(self, request: pb.DeleteListRequest, context: grpc.ServicerContext) -> pb.DeleteListResponse:
        caller = self.access.authorize(context, "DeleteList", [request.name])
        record = self.service.delete_list(request.name, actor=caller.key_id)
        return pb.DeleteListResponse(name=record.name, entries_deleted=record.entry_count)

    # Entries -------------------------------------------------------------

    def _add_request(self, request: pb.AddEntryRequest) -> AddRequest:
        return AddRequest(data=self._image(request.image), meta=dict(request.meta), id=request.id)

    @rpc
    def AddEntry(self, request: pb.AddEntryRequest, context: grpc.ServicerContext) -> pb.AddEntryResponse:
        caller = self.access.authorize(context, "AddEntry", [request.list])
        return _single_add(
            request.list, self.service.add_entries(request.list, [self._add_request(request)], actor=caller.key_id)
        )

    @stream_rpc
    def AddEntries(
        self, requests: Iterator[pb.AddEntryRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.AddEntriesResult]:
        caller = self.access.authorize(context, "AddEntries")

        def prepare(request: pb.AddEntryRequest) -> Any:
            self.access.require(caller, Action.ADD_ENTRIES, [request.list])
            return self.service.prepare_add(request.list, self._add_request(request))

        def finish(prepared: list[tuple[_Numbered, Any]]) -> Iterator[pb.AddEntriesResult]:
            outcomes = self.service.store_prepared([p for _, p in prepared], actor=caller.key_id)
            for (item, _), outcome in zip(prepared, outcomes, strict=True):
                # a malformed item (an error outcome) has no list to name
                list_name = "" if isinstance(outcome, Exception) else item.message.list
                yield _numbered_add(item.index, list_name, outcome)

        with self._stream_place(caller):
            yield from self._pipeline(requests, context, prepare, finish)

    @rpc
    def GetEntry(self, request: pb.GetEntryRequest, context: grpc.ServicerContext) -> pb.Entry:
        self.access.authorize(context, "GetEntry", [request.list])
        entry = self.service.store.get_entry(request.list, request.id)
        guard = self.service.flood.guard_of(self.service.store.get_list(request.list).uid, entry.seq)
        return entry_message(request.list, entry, guard=guard)

    @rpc
    def RemoveEntry(self, request: pb.RemoveEntryRequest, context: grpc.ServicerContext) -> pb.RemoveEntryResponse:
        caller = self.access.authorize(context, "RemoveEntry", [request.list])
        entry = self.service.remove_entry(request.list, request.id, actor=caller.key_id)
        return pb.RemoveEntryResponse(list=request.list, id=entry.id)

    # Hash lists ----------------------------------------------------------

    @rpc
    def AddHash(self, request: pb.AddHashRequest, context: grpc.ServicerContext) -> pb.AddEntryResponse:
        caller = self.access.authorize(context, "AddHash", [request.list])
        return _single_add(
            request.list, self.service.add_hashes(request.list, [hash_add(request.entry)], actor=caller.key_id)
        )

    @stream_rpc
    def ImportEntries(
        self, requests: Iterator[pb.ImportEntriesRequest | _Malformed], context: grpc.ServicerContext
    ) -> Iterator[pb.ImportEntriesResponse]:
        """Each request's entries in one transaction, answered before the next is taken (the reader
        holds at most one more): a client sending in lock-step never waits on us, and a fast one
        gets large transactions."""
        caller = self.access.authorize(context, "ImportEntries")
        position = 0
        with self._stream_place(caller), self._reader(requests, depth=1) as reader:
            while (request := reader.next()) is not _StreamReader.END:
                if isinstance(request, _Malformed):  # a whole batch unreadable: how many entries it held is unknown
                    raise _malformed_error()
                self.access.require(caller, Action.ADD_ENTRIES, [request.list])
                entries = [hash_add(e) for e in request.entries]
                outcomes = self.service.add_hashes(request.list, entries, caller.key_id)
                results = [_numbered_add(i, request.list, out) for i, out in enumerate(outcomes, start=position)]
                position += len(outcomes)
                yield pb.ImportEntriesResponse(results=results)

    @stream_rpc
    def ExportEntries(
        self, request: pb.ExportEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportEntriesResponse]:
        caller = self.access.authorize(context, "ExportEntries", [request.list])
        with self._stream_place(caller):
            for page in self.service.export_entries(request.list, request.with_embeddings):
                if not context.is_active():
                    return
                yield pb.ExportEntriesResponse(entries=[entry_message(request.list, e, vector) for e, vector in page])

    @rpc
    def CheckHashes(self, request: pb.CheckHashesRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        validate_lists_named(request.lists)
        caller = self.access.authorize(context, "CheckHashes", list(request.lists))
        result = self.service.check_hashes(
            request.pdq,
            _optional(request, "pdq_quality"),
            request.md5,
            request.sha256,
            list(request.lists),
            dict(request.meta),
            request.top_k,
            _optional(request, "min_score"),
            request.request_id,
            scope=caller.lists,
        )
        self.checks.record(result, caller.key_id)  # kept like any check's, for GetCheck and feedback
        return check_response(result)

    # Checks --------------------------------------------------------------

    def _check(self, request: pb.CheckRequest, caller: Caller) -> CheckResult:
        """A check naming no lists covers every list the caller may check."""
        return self.service.check(
            self._image(request.image),
            list(request.lists),
            dict(request.meta),
            request.top_k,
            _optional(request, "min_score"),
            request.request_id,
            scope=caller.lists,
        )

    def _answer(self, request: pb.CheckRequest, caller: Caller) -> pb.CheckResponse:
        """Run a check (or queue it, with `defer`), store its result and, with a callback URL, its webhook."""
        if request.callback_url:
            self.checks.validate_callback(request.callback_url)
        if request.defer:
            return pending_response(self._defer(request, caller))
        if request.request_id:
            if request.callback_url:
                validate_check_id(request.request_id)  # its webhook needs it stored
            self.checks.claimable(request.request_id, caller.key_id)
        result = self._check(request, caller)
        self.checks.record(result, caller.key_id, request.callback_url)
        return check_response(result)

    def _defer(self, request: pb.CheckRequest, caller: Caller) -> StoredCheck:
        """Refuse now what would fail for sure (bad lists or limits, an unreachable image URL); queue the rest."""
        min_score = _optional(request, "min_score")
        self.service.validate_check(list(request.lists), dict(request.meta), request.top_k, min_score)
        source = request.image.WhichOneof("source")
        url = request.image.url if source == "url" else ""
        if url:
            check_url(url, self.config.allow_private_urls, self.config.url_timeout)
        order = CheckOrder(
            lists=list(request.lists),
            meta=dict(request.meta),
            top_k=request.top_k,
            min_score=min_score,
            scope=None if caller.lists is None else sorted(caller.lists),
            url=url,
        )
        data = None if url else self._image(request.image)
        check_id = request.request_id or uuid.uuid4().hex
        return self.checks.defer(check_id, caller.key_id, order, data, request.callback_url)

    @rpc
    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        validate_lists_named(request.lists)
        caller = self.access.authorize(context, "Check", list(request.lists))
        return self._answer(request, caller)

    @stream_rpc
    def CheckStream(
        self, requests: Iterator[pb.CheckRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CheckStreamResult]:
        caller = self.access.authorize(context, "CheckStream")

        def prepare(request: pb.CheckRequest) -> pb.CheckResponse:
            validate_lists_named(request.lists)
            self.access.require(caller, Action.CHECK, list(request.lists))
            return self._answer(request, caller)

        def finish(done: list[tuple[Any, Any]]) -> Iterator[pb.CheckStreamResult]:
            for request, outcome in done:
                if isinstance(outcome, Exception):
                    yield pb.CheckStreamResult(index=request.index, error=_item_error(outcome))
                else:
                    yield pb.CheckStreamResult(index=request.index, response=outcome)

        with self._stream_place(caller):
            yield from self._pipeline(requests, context, prepare, finish)

    # Keys and audit ----------------------------------------------------------

    @rpc
    def CreateKey(self, request: pb.CreateKeyRequest, context: grpc.ServicerContext) -> pb.CreateKeyResponse:
        validate_lists_named(request.lists)
        caller = self.access.authorize(context, "CreateKey")
        record, secret = self.access.create_key(caller, request.role, list(request.lists), request.name)
        return pb.CreateKeyResponse(key=key_info(record), secret=secret)

    @rpc
    def ListKeys(self, request: pb.ListKeysRequest, context: grpc.ServicerContext) -> pb.ListKeysResponse:
        self.access.authorize(context, "ListKeys")
        return pb.ListKeysResponse(keys=[key_info(record) for record in self.access.keys()])

    @rpc
    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.KeyInfo:
        caller = self.access.authorize(context, "RevokeKey")
        return key_info(self.access.revoke_key(caller, request.id))

    @rpc
    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.ServicerContext) -> pb.ListAuditResponse:
        self.access.authorize(context, "ListAudit")
        records, next_token = self.service.store.audit(request.list, *_page_args(request), request.page_token)
        return pb.ListAuditResponse(records=[audit_message(r) for r in records], next_page_token=next_token)

    # Stored checks, feedback, calibration, flood guard ---------------------------

    def _readable_check(self, check_id: str, caller: Caller, owner: str | None) -> StoredCheck:
        """A stored check of the caller's own key, or of the key an admin names as its `owner`."""
        if owner is not None and owner != caller.key_id and caller.role != ADMIN:
            raise PermissionDenied(
                f"{caller} may read only its own checks: leave out owner (only an admin names another key)",
                "OWNER_NOT_ALLOWED",
            )
        hint = (
            "; name its owner (a key id) to read another key's check" if caller.role == ADMIN and owner is None else ""
        )
        return self.checks.get(caller.key_id if owner is None else owner, check_id, hint)

    @rpc
    def GetCheck(self, request: pb.GetCheckRequest, context: grpc.ServicerContext) -> pb.CheckRecord:
        caller = self.access.authorize(context, "GetCheck")
        check = self._readable_check(request.id, caller, _optional(request, "owner"))
        delivery = self.checks.outbox.get(check.key) if check.callback_url else None
        return check_record_message(check, delivery)

    @rpc
    def SubmitFeedback(self, request: pb.SubmitFeedbackRequest, context: grpc.ServicerContext) -> pb.Feedback:
        caller = self.access.authorize(context, "SubmitFeedback")
        verdict = VERDICTS.get(request.verdict)
        if verdict is None:
            raise InvalidArgument(
                "verdict is missing: FALSE_POSITIVE, MISSED_DUPLICATE or CONFIRMED", "VERDICT_MISSING"
            )
        validate_note(request.note)
        check = self._readable_check(request.check_id, caller, _optional(request, "owner"))
        if check.status != DONE or check.result is None:
            raise FailedPrecondition(
                f"check {check.id!r} is {check.status}: feedback needs a finished check", "CHECK_NOT_DONE"
            )
        list_name, entry_id, score = self._judged_entry(check.result, request, verdict)
        caller.require(Action.CHECK, [list_name])
        record = FeedbackRecord(
            time.time(),
            caller.key_id,
            check.id,
            list_name,
            entry_id,
            verdict,
            request.note,
            score,
            check.result.decision,
        )
        return feedback_message(self.feedback.add(record))

    def _judged_entry(
        self, result: CheckResult, request: pb.SubmitFeedbackRequest, verdict: str
    ) -> tuple[str, str, float | None]:
        """(list, entry id, its score in the check) that feedback is about."""
        if not request.entry_id:
            if verdict == MISSED_DUPLICATE:
                raise InvalidArgument("a missed duplicate needs the entry it copies (entry_id)", "ENTRY_ID_MISSING")
            flagged = [m for m in result.matches if m.decision != "accept" and m.list_kind != LIST_KIND_ALLOW]
            if not flagged:
                raise InvalidArgument(
                    "the check flagged no entry; name the entry the feedback is about (entry_id)", "ENTRY_ID_MISSING"
                )
            return flagged[0].list, flagged[0].entry.id, flagged[0].score
        for candidate in result.candidates:
            if candidate.id == request.entry_id and request.list in ("", candidate.list):
                return candidate.list, candidate.id, candidate.score
        for match in result.matches:
            if match.entry.id == request.entry_id and request.list in ("", match.list):
                return match.list, match.entry.id, match.score
        if not request.list:
            raise NotFound(
                f"entry {request.entry_id!r} is not among the check's matches; name its list", "ENTRY_NOT_IN_CHECK"
            )
        if verdict != MISSED_DUPLICATE:
            raise InvalidArgument(
                f"entry {request.entry_id!r} did not match in this check: only a missed duplicate can name it",
                "ENTRY_NOT_IN_CHECK",
            )
        self.service.store.get_entry(request.list, request.entry_id)  # NOT_FOUND when it is not on the list
        return request.list, request.entry_id, None

    @rpc
    def ListFeedback(self, request: pb.ListFeedbackRequest, context: grpc.ServicerContext) -> pb.ListFeedbackResponse:
        self.access.authorize(context, "ListFeedback")
        records, next_token = self.feedback.page(request.list, *_page_args(request), request.page_token)
        return pb.ListFeedbackResponse(feedback=[feedback_message(r) for r in records], next_page_token=next_token)

    @rpc
    def Calibrate(self, request: pb.CalibrateRequest, context: grpc.ServicerContext) -> pb.CalibrateResponse:
        caller = self.access.authorize(context, "Calibrate", [request.list])
        record = self.service.store.get_list(request.list)
        if record.kind == LIST_KIND_ALLOW:
            raise FailedPrecondition(
                f"list {record.name!r} is an allow list: its matches never flag, so there is nothing to calibrate",
                "LIST_KIND_ALLOW",
            )
        scores = []
        for check in self.checks.finished():
            if check.result is None or check.submitted < record.created:
                continue
            mine = [c.score for c in check.result.candidates if c.list == record.name]
            if mine:
                scores.append(max(mine))
        calibration = calibrate(record, self.feedback.for_list(record.name), scores)
        applied = False
        if request.apply and calibration.changes:
            record = self.service.store.update_list(
                record.name,
                review_threshold=calibration.review.recommended,
                reject_threshold=calibration.reject.recommended,
                actor=caller.key_id,
                cause="calibrate",
            )
            applied = True
        return calibration_message(calibration, applied, self._list_info(record))

    @rpc
    def ConfirmEntry(self, request: pb.ConfirmEntryRequest, context: grpc.ServicerContext) -> pb.Entry:
        caller = self.access.authorize(context, "ConfirmEntry", [request.list])
        entry = self.service.confirm_entry(request.list, request.id, actor=caller.key_id)
        return entry_message(request.list, entry)

    @rpc
    def GetWebhookSecret(
        self, request: pb.GetWebhookSecretRequest, context: grpc.ServicerContext
    ) -> pb.GetWebhookSecretResponse:
        self.access.authorize(context, "GetWebhookSecret")
        return pb.GetWebhookSecretResponse(secret=self.checks.outbox.secret)

    # Streams ---------------------------------------------------------------

    def _pipeline(
        self,
        requests: Iterator[Any],
        context: grpc.ServicerContext,
        prepare: Callable[[Any], Any],
        finish: Callable[[list[tuple[Any, Any]]], Iterable[Any]],
    ) -> Iterator[Any]:
        """Prepare stream items concurrently, finish them in order, in batches of what is ready.

        The requests are read on a thread of their own (`_StreamReader`), so that a client which
        waits for replies before sending more never deadlocks us; the bounded queue and window keep
        memory flat however fast a client sends. Items past `max_batch_images` end the stream with
        RESOURCE_EXHAUSTED once the earlier ones are answered; a cancelled or expired stream stops
        starting items and its reader quits; one that sends nothing while owed nothing is ended.
        """
        depth = max(2, 2 * self.config.cpu_slots)
        limit = self.config.max_batch_images
        window: deque[tuple[_Numbered, Future[Any]]] = deque()
        ended = overflowed = False
        position = 0

        def run(item: _Numbered) -> Any:
            if not context.is_active():
                return Cancelled("stream cancelled by the client", "CANCELLED")
            if item.message is MALFORMED:
                return _malformed_error()
            try:
                with _on_behalf_of(context):
                    return prepare(item.message)
            except Exception as error:  # noqa: BLE001 - reported per item
                return error

        with self._reader(requests, depth, limit) as reader:
            while not ended or window:
                while not ended and len(window) < depth:
                    message = reader.next(wait=not window)  # idle only while no item is in hand
                    if message is None:
                        break
                    if message is _StreamReader.END or message is _StreamReader.TOO_MANY:
                        ended, overflowed = True, message is _StreamReader.TOO_MANY
                        break
                    item = _Numbered(position, message)
                    position += 1
                    window.append((item, self.executor.submit(run, item)))
                if not window:
                    continue
                window[0][1].result()
                ready = []
                while window and window[0][1].done():
                    item, future = window.popleft()
                    ready.append((item, future.result()))
                yield from finish(ready)
                if not context.is_active():
                    return
        if overflowed:
            raise ResourceExhausted(
                f"a stream may carry at most {limit:,} images (--max-batch-images); send the rest on a new stream",
                "BATCH_TOO_LARGE",
            )

    def _reader(self, requests: Iterator[Any], depth: int, limit: int | None = None) -> _StreamReader:
        return _StreamReader(requests, self.config.stream_idle_timeout, depth, limit)


class _StreamReader:
    """A client stream read on a thread of its own, so that the handler waits for the next request
    with a time limit.

    gRPC Python's request iterator waits for ever, and with it the handler's worker thread: a
    client that opens streams and sends nothing could hold every thread. Here a stream that sends
    nothing for `--stream-idle-timeout` seconds while it is owed no reply ends with
    DEADLINE_EXCEEDED (reason STREAM_IDLE); ending it wakes the reader, which then quits. Past
    `limit` requests the reader stops pulling (the client waits) and reports TOO_MANY.
    """

    END = object()
    TOO_MANY = object()

    def __init__(self, requests: Iterator[Any], idle_timeout: float, depth: int, limit: int | None) -> None:
        self._idle_timeout = idle_timeout
        self._incoming: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        threading.Thread(target=self._read, args=(requests, limit), name="stream-reader", daemon=True).start()

    def __enter__(self) -> _StreamReader:
        return self

    def __exit__(self, *_: object) -> None:
        self._stopped.set()

    def _hand_over(self, item: Any) -> bool:
        while not self._stopped.is_set():
            try:
                self._incoming.put(item, timeout=READER_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, requests: Iterator[Any], limit: int | None) -> None:
        last = self.END
        try:
            for position, message in enumerate(requests):
                if limit is not None and position >= limit:
                    last = self.TOO_MANY
                    break
                if not self._hand_over(message):
                    return
        except Exception:  # noqa: BLE001 - a cancelled stream ends the reading
            pass
        self._hand_over(last)

    def next(self, wait: bool = True) -> Any:
        """The next request, END or TOO_MANY; None when not `wait`ing and none has come yet."""
        try:
            return self._incoming.get(timeout=self._idle_timeout) if wait else self._incoming.get_nowait()
        except queue.Empty:
            if not wait:
                return None
        raise DeadlineExceeded(
            f"the stream sent nothing for {self._idle_timeout:g} s while owed no reply, so the server ended it "
            "(--stream-idle-timeout); open a new one when there is more to send",
            "STREAM_IDLE",
        )


def _single_add(list_name: str, outcomes: list[AddOutcome | Exception]) -> pb.AddEntryResponse:
    (outcome,) = outcomes
    if isinstance(outcome, Exception):
        raise outcome
    return add_response(list_name, outcome)


def _numbered_add(index: int, list_name: str, outcome: AddOutcome | Exception) -> pb.AddEntriesResult:
    """One item of a bulk add's reply: its position and its entry or error."""
    if isinstance(outcome, Exception):
        return pb.AddEntriesResult(index=index, error=_item_error(outcome))
    return pb.AddEntriesResult(index=index, entry=add_response(list_name, outcome))


def _page_args(request: pb.ListAuditRequest | pb.ListFeedbackRequest) -> tuple[float, int]:
    """`since` (unix seconds, 0 when unset) and the page size of a paged listing."""
    if not 0 <= request.limit <= AUDIT_PAGE_MAX:
        raise InvalidArgument(f"limit must lie in [0, {AUDIT_PAGE_MAX}], got {request.limit}", "LIMIT_OUT_OF_RANGE")
    since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else 0.0
    return since, request.limit or AUDIT_PAGE_DEFAULT


class _Numbered:
    """A stream request and its position, so replies can say which they answer."""

    __slots__ = ("index", "message")

    def __init__(self, index: int, message: Any) -> None:
        self.index = index
        self.message = message

"""The gRPC transport: authenticate, protobuf in, one operations call, protobuf out; errors mapped in one place.

Every servicer method reads the same: the caller's key (metadata `authorization`) becomes a
`Caller`, the request becomes the domain object an operation takes (`server.messages`), the
operation authorizes and does the work (`server.operations`), its answer becomes the reply.
What is gRPC's own stays here: status codes with ErrorInfo, malformed request bytes, deadlines
and cancellation, and the machinery of streams (a reader thread, a window of items prepared
concurrently, per-item errors, the batch and per-key stream limits, idle streams ended).
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lookalike.client.errors import (
    AlreadyExists,
    Cancelled,
    DataLoss,
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
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.server import messages
from lookalike.server.auth import AUTHORIZATION, Access, Caller, is_loopback_peer
from lookalike.server.config import ServerConfig
from lookalike.server.errors import bounded, reported
from lookalike.server.operations import Operations
from lookalike.server.records import AddOutcome, validate_lists_named
from lookalike.server.service import raise_if_abandoned
from lookalike.server.slots import PerKeyLimit

ERROR_DOMAIN = "lookalike.v1"
READER_POLL_SECONDS = 0.1
"""How often a stream's reader, blocked on a full queue, checks whether the stream has ended."""
SERVICE = pb.DESCRIPTOR.services_by_name["Lookalike"].full_name

GRPC_CODES: dict[type[LookalikeError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    DeadlineExceeded: code_pb2.DEADLINE_EXCEEDED,
    Cancelled: code_pb2.CANCELLED,
    Unavailable: code_pb2.UNAVAILABLE,
    Internal: code_pb2.INTERNAL,
    DataLoss: code_pb2.DATA_LOSS,
}
"""The gRPC status of each domain error: the one place errors meet gRPC codes (the reason travels in ErrorInfo)."""


def _status_for(error: LookalikeError) -> status_pb2.Status:
    code = GRPC_CODES.get(type(error)) or getattr(code_pb2, error.code, code_pb2.UNKNOWN)
    detail = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    status = status_pb2.Status(code=code, message=bounded(error.message))
    status.details.add().Pack(detail)
    return status


def _item_error(error: Exception) -> pb.ItemError:
    """A stream item's failure, reported in its place while the stream carries on."""
    shown = reported(error, "stream item")
    return pb.ItemError(code=shown.code, message=bounded(shown.message), reason=shown.reason)


def _abort(context: grpc.ServicerContext, error: Exception, method: str) -> None:
    """End the call with the error's status code and reason; an unexpected error is logged under an
    incident id and reported as INTERNAL without its details."""
    context.abort_with_status(rpc_status.to_status(_status_for(reported(error, method))))


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


class LookalikeServicer(pb_grpc.LookalikeServicer):  # type: ignore[misc]
    """gRPC over `Operations`: each method authenticates, converts, calls one operation, converts back."""

    def __init__(
        self, operations: Operations, config: ServerConfig, executor: ThreadPoolExecutor, access: Access
    ) -> None:
        self.ops = operations
        self.config = config
        self.executor = executor
        self.access = access
        self.streams = PerKeyLimit(config.max_streams_per_key)

    def _caller(self, context: grpc.ServicerContext) -> Caller:
        """Who calls: the key in the `authorization` metadata, else (while no key exists) a loopback peer."""
        header = next((str(v) for k, v in context.invocation_metadata() or () if k == AUTHORIZATION), None)
        return self.access.caller_for(header, header is None and is_loopback_peer(context.peer()))

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

    # Lists ---------------------------------------------------------------

    @rpc
    def CreateList(self, request: pb.CreateListRequest, context: grpc.ServicerContext) -> pb.ListInfo:
        return messages.list_info(self.ops.lists.create(self._caller(context), messages.list_spec(request)))

    @rpc
    def GetList(self, request: pb.GetListRequest, context: grpc.ServicerContext) -> pb.ListInfo:
        return messages.list_info(self.ops.lists.get(self._caller(context), request.name))

    @rpc
    def ListLists(self, request: pb.ListListsRequest, context: grpc.ServicerContext) -> pb.ListListsResponse:
        visible = self.ops.lists.visible(self._caller(context))
        return pb.ListListsResponse(lists=[messages.list_info(state) for state in visible])

    @rpc
    def UpdateList(self, request: pb.UpdateListRequest, context: grpc.ServicerContext) -> pb.ListInfo:
        return messages.list_info(self.ops.lists.update(self._caller(context), messages.list_change(request)))

    @rpc
    def DeleteList(self, request: pb.DeleteListRequest, context: grpc.ServicerContext) -> pb.DeleteListResponse:
        record = self.ops.lists.delete(self._caller(context), request.name)
        return pb.DeleteListResponse(name=record.name, entries_deleted=record.entry_count)

    # Entries -------------------------------------------------------------

    @rpc
    def AddEntry(self, request: pb.AddEntryRequest, context: grpc.ServicerContext) -> pb.AddEntryResponse:
        outcome = self.ops.entries.add(self._caller(context), request.list, messages.new_picture(request))
        return messages.add_response(request.list, outcome)

    @stream_rpc
    def AddEntries(
        self, requests: Iterator[pb.AddEntryRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.AddEntriesResult]:
        caller = self._caller(context)
        bulk = self.ops.entries.bulk_add(caller)

        def prepare(request: pb.AddEntryRequest) -> Any:
            return bulk.prepare(request.list, messages.new_picture(request))

        def finish(prepared: list[tuple[_Numbered, Any]]) -> Iterator[pb.AddEntriesResult]:
            outcomes = bulk.store([p for _, p in prepared])
            for (item, _), outcome in zip(prepared, outcomes, strict=True):
                # a malformed item (an error outcome) has no list to name
                list_name = "" if isinstance(outcome, Exception) else item.message.list
                yield _numbered_add(item.index, list_name, outcome)

        with self._stream_place(caller):
            yield from self._pipeline(requests, context, prepare, finish)

    @rpc
    def GetEntry(self, request: pb.GetEntryRequest, context: grpc.ServicerContext) -> pb.Entry:
        return messages.listed_entry(self.ops.entries.get(self._caller(context), request.list, request.id))

    @rpc
    def ListEntries(self, request: pb.ListEntriesRequest, context: grpc.ServicerContext) -> pb.ListEntriesResponse:
        page = self.ops.entries.page(self._caller(context), request.list, messages.entry_query(request))
        return messages.entry_page(page)

    @rpc
    def RemoveEntry(self, request: pb.RemoveEntryRequest, context: grpc.ServicerContext) -> pb.RemoveEntryResponse:
        entry = self.ops.entries.remove(self._caller(context), request.list, request.id)
        return pb.RemoveEntryResponse(list=request.list, id=entry.id)

    # Hash lists ----------------------------------------------------------

    @rpc
    def AddHash(self, request: pb.AddHashRequest, context: grpc.ServicerContext) -> pb.AddEntryResponse:
        outcome = self.ops.entries.add_hash(self._caller(context), request.list, messages.hash_add(request.entry))
        return messages.add_response(request.list, outcome)

    @stream_rpc
    def ImportEntries(
        self, requests: Iterator[pb.ImportEntriesRequest | _Malformed], context: grpc.ServicerContext
    ) -> Iterator[pb.ImportEntriesResponse]:
        """Each request's entries in one transaction, answered before the next is taken (the reader
        holds at most one more): a client sending in lock-step never waits on us, and a fast one
        gets large transactions."""
        caller = self._caller(context)
        bulk = self.ops.entries.bulk_add(caller)
        position = 0
        with self._stream_place(caller), self._reader(requests, depth=1) as reader:
            while (request := reader.next()) is not _StreamReader.END:
                if isinstance(request, _Malformed):  # a whole batch unreadable: how many entries it held is unknown
                    raise _malformed_error()
                outcomes = bulk.add_hashes(request.list, [messages.hash_add(e) for e in request.entries])
                results = [_numbered_add(i, request.list, out) for i, out in enumerate(outcomes, start=position)]
                position += len(outcomes)
                yield pb.ImportEntriesResponse(results=results)

    @stream_rpc
    def ExportEntries(
        self, request: pb.ExportEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportEntriesResponse]:
        caller = self._caller(context)
        pages = self.ops.entries.export(caller, request.list, request.with_embeddings)
        with self._stream_place(caller):
            for page in pages:
                if not context.is_active():
                    return
                entries = [messages.entry_message(request.list, e, vector) for e, vector in page]
                yield pb.ExportEntriesResponse(entries=entries)

    @rpc
    def CheckHashes(self, request: pb.CheckHashesRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        validate_lists_named(request.lists)  # before the key is looked at: no work for however many names
        result = self.ops.checks.check_hashes(self._caller(context), messages.hash_check(request))
        return messages.check_response(result)

    # Checks --------------------------------------------------------------

    @rpc
    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        validate_lists_named(request.lists)  # before the key is looked at: no work for however many names
        return messages.check_answer(self.ops.checks.check(self._caller(context), messages.new_check(request)))

    @stream_rpc
    def CheckStream(
        self, requests: Iterator[pb.CheckRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CheckStreamResult]:
        caller = self._caller(context)

        def prepare(request: pb.CheckRequest) -> pb.CheckResponse:
            return messages.check_answer(self.ops.checks.check(caller, messages.new_check(request)))

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
        validate_lists_named(request.lists)  # before the key is looked at: no work for however many names
        record, secret = self.ops.keys.create(self._caller(context), request.role, list(request.lists), request.name)
        return pb.CreateKeyResponse(key=messages.key_info(record), secret=secret)

    @rpc
    def ListKeys(self, request: pb.ListKeysRequest, context: grpc.ServicerContext) -> pb.ListKeysResponse:
        return pb.ListKeysResponse(keys=[messages.key_info(r) for r in self.ops.keys.all(self._caller(context))])

    @rpc
    def RevokeKey(self, request: pb.RevokeKeyRequest, context: grpc.ServicerContext) -> pb.KeyInfo:
        return messages.key_info(self.ops.keys.revoke(self._caller(context), request.id))

    @rpc
    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.ServicerContext) -> pb.ListAuditResponse:
        records, next_token = self.ops.keys.audit(self._caller(context), messages.page_request(request))
        return pb.ListAuditResponse(records=[messages.audit_message(r) for r in records], next_page_token=next_token)

    # Stored checks, feedback, calibration, flood guard ---------------------------

    @rpc
    def GetCheck(self, request: pb.GetCheckRequest, context: grpc.ServicerContext) -> pb.CheckRecord:
        view = self.ops.checks.get(self._caller(context), request.id, messages.optional(request, "owner"))
        return messages.check_view(view)

    @rpc
    def ListChecks(self, request: pb.ListChecksRequest, context: grpc.ServicerContext) -> pb.ListChecksResponse:
        return messages.check_page(self.ops.checks.page(self._caller(context), messages.check_query(request)))

    @rpc
    def GetCheckActivity(
        self, request: pb.GetCheckActivityRequest, context: grpc.ServicerContext
    ) -> pb.GetCheckActivityResponse:
        hours = self.ops.checks.activity(self._caller(context), request.list, request.hours)
        return messages.activity_message(hours)

    @rpc
    def SubmitFeedback(self, request: pb.SubmitFeedbackRequest, context: grpc.ServicerContext) -> pb.Feedback:
        record = self.ops.feedback.submit(self._caller(context), messages.feedback_submission(request))
        return messages.feedback_message(record)

    @rpc
    def ListFeedback(self, request: pb.ListFeedbackRequest, context: grpc.ServicerContext) -> pb.ListFeedbackResponse:
        records, next_token = self.ops.feedback.page(self._caller(context), messages.page_request(request))
        feedback = [messages.feedback_message(r) for r in records]
        return pb.ListFeedbackResponse(feedback=feedback, next_page_token=next_token)

    @rpc
    def Calibrate(self, request: pb.CalibrateRequest, context: grpc.ServicerContext) -> pb.CalibrateResponse:
        outcome = self.ops.feedback.calibrate(self._caller(context), request.list, request.apply)
        return messages.calibration_message(outcome)

    @rpc
    def ConfirmEntry(self, request: pb.ConfirmEntryRequest, context: grpc.ServicerContext) -> pb.Entry:
        entry = self.ops.entries.confirm(self._caller(context), request.list, request.id)
        return messages.entry_message(request.list, entry)

    @rpc
    def GetWebhookSecret(
        self, request: pb.GetWebhookSecretRequest, context: grpc.ServicerContext
    ) -> pb.GetWebhookSecretResponse:
        return pb.GetWebhookSecretResponse(secret=self.ops.checks.webhook_secret(self._caller(context)))

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


def _numbered_add(index: int, list_name: str, outcome: AddOutcome | Exception) -> pb.AddEntriesResult:
    """One item of a bulk add's reply: its position and its entry or error."""
    if isinstance(outcome, Exception):
        return pb.AddEntriesResult(index=index, error=_item_error(outcome))
    return pb.AddEntriesResult(index=index, entry=messages.add_response(list_name, outcome))


class _Numbered:
    """A stream request and its position, so replies can say which they answer."""

    __slots__ = ("index", "message")

    def __init__(self, index: int, message: Any) -> None:
        self.index = index
        self.message = message

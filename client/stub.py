"""The thin client: typed calls over one gRPC channel, errors re-raised as typed exceptions.

An API key travels as `authorization: Bearer <key>` metadata on every call; TLS
trusts a given CA (or the system's) and may present a client certificate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lookalike.client.errors import InvalidArgument, LookalikeError, error_for_code
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.client.types import (
    DECISIONS,
    VERDICTS,
    AddResult,
    AuditRecord,
    Calibration,
    CheckRecord,
    CheckResult,
    Entry,
    EntryPage,
    Feedback,
    HourlyChecks,
    ImageInput,
    ImportSummary,
    KeyInfo,
    ListInfo,
    NewKey,
    image_message,
)

DEFAULT_SERVER = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
IMPORT_BATCH = 1000
"""Entries per ImportEntries message: each is one transaction on the server."""
T = TypeVar("T")


def translate(error: grpc.RpcError) -> LookalikeError:
    """A failed call as our typed error, with the server's ErrorInfo reason when given."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    reason = ""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - malformed trailers: fall back to the plain status
        status = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
    return error_for_code(code.name, message or code.name, reason)


def _call[T](function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return function(*args, **kwargs)
    except grpc.RpcError as error:
        raise translate(error) from None


def _stream[T](responses: Iterator[T]) -> Iterator[T]:
    try:
        yield from responses
    except grpc.RpcError as error:
        raise translate(error) from None


def _set_since(request: Any, since: datetime | float | None) -> None:
    """Set a list request's `since` Timestamp from a datetime or unix seconds (left unset for None)."""
    if since is not None:
        request.since.FromNanoseconds(int((since.timestamp() if isinstance(since, datetime) else since) * 1e9))


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _BearerKey(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds `authorization: Bearer <key>` to every call on a channel."""

    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _with_key(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_key(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_key(details), requests)


def _read_file(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidArgument(f"cannot read the {what} {path}: {error.strerror}", "TLS_FILE_UNREADABLE") from None


def channel_credentials(
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS trusting `tls_ca` (the system's roots when None), presenting a client certificate when given."""
    if bool(tls_cert) != bool(tls_key):
        raise InvalidArgument("a client certificate needs both --tls-cert and --tls-key", "TLS_INCOMPLETE")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(tls_ca, "TLS CA file") if tls_ca else None,
        private_key=_read_file(tls_key, "TLS key file") if tls_key else None,
        certificate_chain=_read_file(tls_cert, "TLS certificate file") if tls_cert else None,
    )


class LookalikeClient:
    """Calls a Lookalike server. `with LookalikeClient("host:port") as client: client.check(path)`.

    `api_key` defaults to `LOOKALIKE_API_KEY` ("" sends none). TLS is used when `tls`
    is true or any of `tls_ca` (trusted CA, PEM), `tls_cert`/`tls_key` (client
    certificate, PEM) is given; they default to `LOOKALIKE_TLS_CA`,
    `LOOKALIKE_CLIENT_CERT` and `LOOKALIKE_CLIENT_KEY`.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = 60.0,
        channel: grpc.Channel | None = None,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self.target = target or os.environ.get("LOOKALIKE_SERVER") or DEFAULT_SERVER
        self.timeout = timeout
        self.tls = False
        """Whether this client made a TLS channel (unknown, False, for a `channel` passed in)."""
        api_key = os.environ.get("LOOKALIKE_API_KEY", "") if api_key is None else api_key
        tls_ca = os.environ.get("LOOKALIKE_TLS_CA") if tls_ca is None else tls_ca
        tls_cert = os.environ.get("LOOKALIKE_CLIENT_CERT") if tls_cert is None else tls_cert
        tls_key = os.environ.get("LOOKALIKE_CLIENT_KEY") if tls_key is None else tls_key
        if channel is None:
            options = [
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ]
            self.tls = bool(tls or tls_ca or tls_cert or tls_key)
            if self.tls:
                credentials = channel_credentials(tls_ca, tls_cert, tls_key)
                channel = grpc.secure_channel(self.target, credentials, options=options)
            else:
                channel = grpc.insecure_channel(self.target, options=options)
        if api_key:
            channel = grpc.intercept_channel(channel, _BearerKey(api_key))
        self._channel = channel
        self._stub = pb_grpc.LookalikeStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LookalikeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (the server is up)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise error_for_code("UNAVAILABLE", f"no server answered at {self.target} within {timeout:g} s") from None

    # Lists ---------------------------------------------------------------

    def create_list(
        self,
        name: str,
        *,
        description: str = "",
        review_threshold: float | None = None,
        reject_threshold: float | None = None,
        model: str = "",
        dihedral: bool | None = None,
        kind: str = "",
        thumbnails: bool = False,
        keypoints: bool | None = None,
    ) -> ListInfo:
        """`dihedral` (default true): checks also match the query's rotations and mirrors.
        `kind` "allow" makes an allow list: its matches never flag, and outrank disallow matches.
        `thumbnails`: pictures added keep a small thumbnail for the dashboard (off: no picture is kept).
        `keypoints` (default true): pictures added keep their keypoints (about 17 KiB each), which send a copy
        the embedding is unsure of to review; off for lists of millions."""
        request = pb.CreateListRequest(
            name=name, description=description, model=model, kind=kind, thumbnails=thumbnails
        )
        if dihedral is not None:
            request.dihedral = dihedral
        if keypoints is not None:
            request.keypoints = keypoints
        if review_threshold is not None:
            request.review_threshold = review_threshold
        if reject_threshold is not None:
            request.reject_threshold = reject_threshold
        return ListInfo.from_pb(_call(self._stub.CreateList, request, timeout=self.timeout))

    def get_list(self, name: str) -> ListInfo:
        return ListInfo.from_pb(_call(self._stub.GetList, pb.GetListRequest(name=name), timeout=self.timeout))

    def lists(self) -> list[ListInfo]:
        reply = _call(self._stub.ListLists, pb.ListListsRequest(), timeout=self.timeout)
        return [ListInfo.from_pb(m) for m in reply.lists]

    def update_list(
        self,
        name: str,
        *,
        description: str | None = None,
        review_threshold: float | None = None,
        reject_threshold: float | None = None,
        dihedral: bool | None = None,
        thumbnails: bool | None = None,
        keypoints: bool | None = None,
    ) -> ListInfo:
        """None leaves a setting as it is; turning `thumbnails` or `keypoints` off deletes those kept."""
        request = pb.UpdateListRequest(name=name)
        if dihedral is not None:
            request.dihedral = dihedral
        if thumbnails is not None:
            request.thumbnails = thumbnails
        if keypoints is not None:
            request.keypoints = keypoints
        if description is not None:
            request.description = description
        if review_threshold is not None:
            request.review_threshold = review_threshold
        if reject_threshold is not None:
            request.reject_threshold = reject_threshold
        return ListInfo.from_pb(_call(self._stub.UpdateList, request, timeout=self.timeout))

    def delete_list(self, name: str) -> int:
        """Delete a list and all its entries; returns how many entries went with it."""
        reply = _call(self._stub.DeleteList, pb.DeleteListRequest(name=name), timeout=self.timeout)
        return int(reply.entries_deleted)

    # Entries -------------------------------------------------------------

    def add(
        self, list_name: str, image: ImageInput, *, meta: Mapping[str, str] | None = None, id: str = ""
    ) -> AddResult:
        request = pb.AddEntryRequest(list=list_name, image=image_message(image), meta=dict(meta or {}), id=id)
        return AddResult.from_pb(_call(self._stub.AddEntry, request, timeout=self.timeout))

    def add_many(self, requests: Iterable[pb.AddEntryRequest]) -> Iterator[tuple[int, AddResult | LookalikeError]]:
        """Bulk add over one stream: yields (position, result or per-item error) in order."""
        for reply in _stream(self._stub.AddEntries(iter(requests))):
            if reply.HasField("error"):
                yield reply.index, error_for_code(reply.error.code, reply.error.message, reply.error.reason)
            else:
                yield reply.index, AddResult.from_pb(reply.entry)

    def get_entry(self, list_name: str, entry_id: str) -> Entry:
        request = pb.GetEntryRequest(list=list_name, id=entry_id)
        return Entry.from_pb(_call(self._stub.GetEntry, request, timeout=self.timeout))

    def entries(self, list_name: str, *, q: str = "", page_size: int = 0) -> Iterator[Entry]:
        """A list's entries, newest first, every page (asked as they are read). `q` narrows them: an entry
        id or a hash's hex (SHA-256, MD5, PDQ) matches exactly, other text also matches meta values."""
        page_token = ""
        while True:
            page = self.entries_page(list_name, q=q, page_size=page_size, page_token=page_token)
            yield from page.entries
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def entries_page(self, list_name: str, *, q: str = "", page_size: int = 0, page_token: str = "") -> EntryPage:
        """One page of `entries` (`page_size` 0: the server's default, 100; at most 1000). A page may hold
        fewer entries than asked, even none, and still have a `next_page_token` (a search reads a bounded
        number of entries per page)."""
        request = pb.ListEntriesRequest(list=list_name, q=q, page_size=page_size, page_token=page_token)
        return EntryPage.from_pb(_call(self._stub.ListEntries, request, timeout=self.timeout))

    def remove(self, list_name: str, entry_id: str) -> None:
        _call(self._stub.RemoveEntry, pb.RemoveEntryRequest(list=list_name, id=entry_id), timeout=self.timeout)

    # Hash lists ------------------------------------------------------------

    @staticmethod
    def hash_entry(
        *,
        pdq: str = "",
        pdq_quality: int | None = None,
        md5: str = "",
        sha256: str = "",
        meta: Mapping[str, str] | None = None,
        id: str = "",
    ) -> pb.HashEntry:
        """An entry given by hashes: a PDQ (quality 100 when not given), an MD5 and/or a SHA-256."""
        entry = pb.HashEntry(id=id, pdq=pdq, md5=md5, sha256=sha256, meta=dict(meta or {}))
        if pdq_quality is not None:
            entry.pdq_quality = pdq_quality
        return entry

    def add_hash(self, list_name: str, entry: pb.HashEntry) -> AddResult:
        """Add one entry by its hashes (see `hash_entry`); adding it again returns the first as a duplicate."""
        request = pb.AddHashRequest(list=list_name, entry=entry)
        return AddResult.from_pb(_call(self._stub.AddHash, request, timeout=self.timeout))

    def import_entries(
        self, list_name: str, entries: Iterable[pb.HashEntry], *, batch: int = IMPORT_BATCH
    ) -> ImportSummary:
        """Bulk add by hashes (see `hash_entry`), `batch` entries per transaction, all before returning:
        how many were added, how many were listed already, and each refused entry's error. A failed
        call (a list that does not exist, a lost connection) raises; the entries before it stay added."""
        counts = {"added": 0, "duplicates": 0}
        errors: list[tuple[int, LookalikeError]] = []
        for index, result in self.import_stream(list_name, entries, batch=batch):
            if isinstance(result, LookalikeError):
                errors.append((index, result))
            else:
                counts["duplicates" if result.duplicate else "added"] += 1
        return ImportSummary(list_name, counts["added"], counts["duplicates"], tuple(errors))

    def import_stream(
        self, list_name: str, entries: Iterable[pb.HashEntry], *, batch: int = IMPORT_BATCH
    ) -> Iterator[tuple[int, AddResult | LookalikeError]]:
        """`import_entries` one result at a time, as the server answers: yields (position, result or
        that entry's error) in order. Nothing is sent until it is iterated."""

        def requests() -> Iterator[pb.ImportEntriesRequest]:
            pending: list[pb.HashEntry] = []
            for entry in entries:
                pending.append(entry)
                if len(pending) >= batch:
                    yield pb.ImportEntriesRequest(list=list_name, entries=pending)
                    pending = []
            if pending:
                yield pb.ImportEntriesRequest(list=list_name, entries=pending)

        for reply in _stream(self._stub.ImportEntries(requests())):
            for result in reply.results:
                if result.HasField("error"):
                    yield result.index, error_for_code(result.error.code, result.error.message, result.error.reason)
                else:
                    yield result.index, AddResult.from_pb(result.entry)

    def export_entries(self, list_name: str, *, with_embeddings: bool = False) -> Iterator[Entry]:
        """Every entry of a list in the order added; `embedding` is filled when asked for."""
        request = pb.ExportEntriesRequest(list=list_name, with_embeddings=with_embeddings)
        for reply in _stream(self._stub.ExportEntries(request)):
            for entry in reply.entries:
                yield Entry.from_pb(entry)

    def check_hashes(
        self,
        lists: Sequence[str] = (),
        *,
        pdq: str = "",
        pdq_quality: int | None = None,
        md5: str = "",
        sha256: str = "",
        meta: Mapping[str, str] | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        request_id: str = "",
        after: str = "",
    ) -> CheckResult:
        """Check hashes computed elsewhere (a PDQ, an MD5, a SHA-256) against the named lists (all when none).
        `after`: a write's `consistency_token`; the server answers once it has applied that write."""
        request = pb.CheckHashesRequest(
            lists=list(lists),
            pdq=pdq,
            md5=md5,
            sha256=sha256,
            meta=dict(meta or {}),
            top_k=top_k,
            request_id=request_id,
            after=after,
        )
        if pdq_quality is not None:
            request.pdq_quality = pdq_quality
        if min_score is not None:
            request.min_score = min_score
        return CheckResult.from_pb(_call(self._stub.CheckHashes, request, timeout=self.timeout))

    # Checks --------------------------------------------------------------

    @staticmethod
    def check_request(
        image: ImageInput,
        lists: Sequence[str] = (),
        *,
        meta: Mapping[str, str] | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        request_id: str = "",
        defer: bool = False,
        callback_url: str = "",
        after: str = "",
    ) -> pb.CheckRequest:
        request = pb.CheckRequest(
            image=image_message(image),
            lists=list(lists),
            meta=dict(meta or {}),
            top_k=top_k,
            request_id=request_id,
            defer=defer,
            callback_url=callback_url,
            after=after,
        )
        if min_score is not None:
            request.min_score = min_score
        return request

    def check(
        self,
        image: ImageInput,
        lists: Sequence[str] = (),
        *,
        meta: Mapping[str, str] | None = None,
        top_k: int = 0,
        min_score: float | None = None,
        request_id: str = "",
        defer: bool = False,
        callback_url: str = "",
        after: str = "",
    ) -> CheckResult:
        """Check one image against the named lists (every list when none is named).

        `defer`: answer at once with the check's id and status "pending" (`get_check` gives the result).
        `callback_url`: also POST the result there, signed (see `client.webhooks`).
        `after`: a write's `consistency_token`; the server answers once it has applied that write (on a
        cluster node that has not yet: waits up to the deadline, then UNAVAILABLE with REPLICA_BEHIND).
        """
        request = self.check_request(
            image,
            lists,
            meta=meta,
            top_k=top_k,
            min_score=min_score,
            request_id=request_id,
            defer=defer,
            callback_url=callback_url,
            after=after,
        )
        return CheckResult.from_pb(_call(self._stub.Check, request, timeout=self.timeout))

    def check_many(self, requests: Iterable[pb.CheckRequest]) -> Iterator[tuple[int, CheckResult | LookalikeError]]:
        """Many checks over one stream: yields (position, result or per-item error) in order."""
        for reply in _stream(self._stub.CheckStream(iter(requests))):
            if reply.HasField("error"):
                yield reply.index, error_for_code(reply.error.code, reply.error.message, reply.error.reason)
            else:
                yield reply.index, CheckResult.from_pb(reply.response)

    # Stored checks, feedback, calibration, flood guard --------------------------

    def get_check(self, check_id: str, *, owner: str | None = None) -> CheckRecord:
        """A stored check of this key's: pending, done with its result, or failed.

        Each key's check ids are its own; an admin reads another key's check by naming its `owner` (a key id).
        """
        request = pb.GetCheckRequest(id=check_id, owner=owner)
        return CheckRecord.from_pb(_call(self._stub.GetCheck, request, timeout=self.timeout))

    def wait_for_check(
        self, check_id: str, timeout: float = 60.0, poll: float = 0.1, *, owner: str | None = None
    ) -> CheckRecord:
        """Poll `get_check` until the check is no longer pending (or `timeout` seconds pass: it is returned pending)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get_check(check_id, owner=owner)
            if record.status != "pending" or time.monotonic() >= deadline:
                return record
            time.sleep(poll)

    def submit_feedback(
        self,
        check_id: str,
        verdict: str,
        *,
        entry_id: str = "",
        list_name: str = "",
        note: str = "",
        owner: str | None = None,
    ) -> Feedback:
        """A verdict ("false_positive", "missed_duplicate", "confirmed") on an entry of a stored check.

        `entry_id` empty: the check's best flagging match. `list_name` is needed only for an entry
        the check did not come near (a missed duplicate). `owner`: as for `get_check`.
        """
        if verdict not in VERDICTS:
            raise InvalidArgument(
                f"verdict {verdict!r} is unknown; use one of {', '.join(VERDICTS)}", "VERDICT_UNKNOWN"
            )
        request = pb.SubmitFeedbackRequest(
            check_id=check_id, entry_id=entry_id, verdict=VERDICTS[verdict], note=note, list=list_name, owner=owner
        )
        return Feedback.from_pb(_call(self._stub.SubmitFeedback, request, timeout=self.timeout))

    def feedback(
        self, list_name: str = "", *, since: datetime | float | None = None, page_size: int = 0
    ) -> Iterator[Feedback]:
        """Feedback oldest first, on one list or all, from `since`, every page (admin)."""
        request = pb.ListFeedbackRequest(list=list_name, limit=page_size)
        _set_since(request, since)
        for record in self._pages(self._stub.ListFeedback, request, "feedback"):
            yield Feedback.from_pb(record)

    def list_checks(self, decision: str, *, owner: str | None = None, page_size: int = 0) -> Iterator[CheckRecord]:
        """Stored checks of `decision` ("accept", "review", "reject"), newest first, every page: this key's own
        (an admin's: every key's, or those of the `owner` it names). Each carries its `owner`."""
        if decision not in DECISIONS:
            raise InvalidArgument(
                f"decision {decision!r} is unknown; use one of {', '.join(DECISIONS)}", "DECISION_UNKNOWN"
            )
        request = pb.ListChecksRequest(decision=DECISIONS[decision], page_size=page_size, owner=owner)
        for record in self._pages(self._stub.ListChecks, request, "checks"):
            yield CheckRecord.from_pb(record)

    def check_activity(self, list_name: str = "", *, hours: int = 0) -> list[HourlyChecks]:
        """Checks per clock hour by decision, oldest first, ending with the current hour (`hours` 0: 24): of one
        list, by the decision it gave on its own, or of every check (admin)."""
        request = pb.GetCheckActivityRequest(list=list_name, hours=hours)
        reply = _call(self._stub.GetCheckActivity, request, timeout=self.timeout)
        return [HourlyChecks.from_pb(hour) for hour in reply.hours]

    def calibrate(self, list_name: str, *, apply: bool = False) -> Calibration:
        """Thresholds that would have avoided the reported errors, and their cost; `apply` sets them (admin)."""
        request = pb.CalibrateRequest(list=list_name, apply=apply)
        return Calibration.from_pb(_call(self._stub.Calibrate, request, timeout=self.timeout))

    def confirm_entry(self, list_name: str, entry_id: str) -> Entry:
        """Lift an entry's flood guard: its present match rate is declared usual (admin)."""
        request = pb.ConfirmEntryRequest(list=list_name, id=entry_id)
        return Entry.from_pb(_call(self._stub.ConfirmEntry, request, timeout=self.timeout))

    def webhook_secret(self) -> str:
        """The secret webhook signatures are made with, for receivers (admin)."""
        reply = _call(self._stub.GetWebhookSecret, pb.GetWebhookSecretRequest(), timeout=self.timeout)
        return str(reply.secret)

    # Keys and audit (admin) ----------------------------------------------------

    def create_key(self, role: str, lists: Sequence[str] = (), *, name: str = "") -> NewKey:
        """A new API key: "admin", "writer" (needs lists) or "checker" (optionally limited to lists)."""
        request = pb.CreateKeyRequest(role=role, lists=list(lists), name=name)
        reply = _call(self._stub.CreateKey, request, timeout=self.timeout)
        return NewKey(KeyInfo.from_pb(reply.key), reply.secret)

    def keys(self) -> list[KeyInfo]:
        """Every key, revoked ones included."""
        reply = _call(self._stub.ListKeys, pb.ListKeysRequest(), timeout=self.timeout)
        return [KeyInfo.from_pb(m) for m in reply.keys]

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Revoke a key at once; the last admin key cannot be revoked (FailedPrecondition)."""
        reply = _call(self._stub.RevokeKey, pb.RevokeKeyRequest(id=key_id), timeout=self.timeout)
        return KeyInfo.from_pb(reply)

    def audit(
        self, list_name: str = "", *, since: datetime | float | None = None, page_size: int = 0
    ) -> Iterator[AuditRecord]:
        """Audit records oldest first, on one list or all, from `since` (a datetime or unix seconds), every page."""
        request = pb.ListAuditRequest(list=list_name, limit=page_size)
        _set_since(request, since)
        for record in self._pages(self._stub.ListAudit, request, "records"):
            yield AuditRecord.from_pb(record)

    def _pages(self, rpc: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
        """The messages in reply field `field` of every page `rpc` answers, following `next_page_token`."""
        while True:
            reply = _call(rpc, request, timeout=self.timeout)
            yield from getattr(reply, field)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

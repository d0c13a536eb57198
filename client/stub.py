"""The thin client: typed calls over one gRPC channel, errors re-raised as typed exceptions."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from client.errors import LookalikeError, error_for_code
from client.lookalike_pb import lookalike_pb2 as pb
from client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from client.types import (
    AddResult,
    CheckResult,
    Entry,
    ImageInput,
    ListInfo,
    image_message,
)

DEFAULT_SERVER = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
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


class LookalikeClient:
    """Calls a Lookalike server. `with LookalikeClient("host:port") as client: client.check(path)`."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = 60.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.target = target or os.environ.get("LOOKALIKE_SERVER") or DEFAULT_SERVER
        self.timeout = timeout
        self._channel = channel or grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
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
    ) -> ListInfo:
        request = pb.CreateListRequest(name=name, description=description, model=model)
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
    ) -> ListInfo:
        request = pb.UpdateListRequest(name=name)
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

    def remove(self, list_name: str, entry_id: str) -> None:
        _call(self._stub.RemoveEntry, pb.RemoveEntryRequest(list=list_name, id=entry_id), timeout=self.timeout)

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
    ) -> pb.CheckRequest:
        request = pb.CheckRequest(
            image=image_message(image), lists=list(lists), meta=dict(meta or {}), top_k=top_k, request_id=request_id
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
    ) -> CheckResult:
        """Check one image against the named lists (every list when none is named)."""
        request = self.check_request(image, lists, meta=meta, top_k=top_k, min_score=min_score, request_id=request_id)
        return CheckResult.from_pb(_call(self._stub.Check, request, timeout=self.timeout))

    def check_many(self, requests: Iterable[pb.CheckRequest]) -> Iterator[tuple[int, CheckResult | LookalikeError]]:
        """Many checks over one stream: yields (position, result or per-item error) in order."""
        for reply in _stream(self._stub.CheckStream(iter(requests))):
            if reply.HasField("error"):
                yield reply.index, error_for_code(reply.error.code, reply.error.message, reply.error.reason)
            else:
                yield reply.index, CheckResult.from_pb(reply.response)

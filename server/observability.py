"""Operations at the gRPC boundary: one log line and metrics per call, the readiness gate, and
which calls run where (the concurrency limit, threads of their own for health checks).

Request-level accounting (count, status code, latency, the log line) happens in
one interceptor, so no servicer method can forget it. The HTTP transport keeps the same
accounts with the same `CallNotes` and `record_call`, and counts its calls in the same
`AdmittedCalls`, so both transports share one log format, one set of metrics and one limit.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE

from lookalike.client.errors import ResourceExhausted, Unavailable
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.api import _abort
from lookalike.server.metrics import Metrics

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor

P = ParamSpec("P")
T = TypeVar("T")
request_log = logging.getLogger("lookalike.requests")
_PLAIN = re.compile(r"[A-Za-z0-9._:*-]{1,64}")
LOG_VALUE_CHARS = 100
"""A logged value is cut to this many characters (before escaping)."""
LOG_LISTS_SHOWN = 3
"""List names a log line shows; the others are counted (`lists=a,b,c,+997`): a line and what a
call keeps for it stay small however many names it sends, a stream's items included."""


def _log_value(text: str) -> str:
    """Plain names as they are; anything else quoted and escaped, so a line stays one line."""
    return text if _PLAIN.fullmatch(text) else json.dumps(text[:LOG_VALUE_CHARS])


def _lists_named(request: Any) -> list[str]:
    fields = request.DESCRIPTOR.fields_by_name
    if "lists" in fields:
        return list(request.lists)
    for name in ("list", "name"):
        if name in fields:
            return [getattr(request, name)]
    return []


def _metadata_request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            return value
    return ""


def _status_code(context: grpc.ServicerContext) -> str:
    """The code the client sees: what the handler set, else how the call ended."""
    code = context.code()  # type: ignore[attr-defined]  # real since grpcio 1.38, missing from grpc-stubs
    if code is not None:
        return str(code.name)
    if not context.is_active():
        return "DEADLINE_EXCEEDED" if context.time_remaining() <= 0 else "CANCELLED"
    return "OK"


def _decision_name(value: int) -> str:
    return str(pb.Decision.Name(value)).lower()


class CallNotes:
    """What one call's log line and metrics need, gathered while it runs (whatever its transport)."""

    def __init__(self, method: str, streaming: bool = False, request_id: str = "") -> None:
        self.method = method
        self.streaming = streaming
        self.started = time.perf_counter()
        self.request_id = request_id
        self.lists: list[str] = []
        """The first LOG_LISTS_SHOWN names the call named (each cut short)."""
        self.more_lists = 0
        """Names beyond those, counted each time an item names one."""
        self.items = 0
        self.decisions: Tally[str] = Tally()

    def saw_request(self, request: Any) -> None:
        self.items += len(request.entries) if isinstance(request, pb.ImportEntriesRequest) else 1
        if not hasattr(request, "DESCRIPTOR"):
            return  # bytes that did not parse (api.MALFORMED): no lists to note
        names = _lists_named(request)
        if not names and "lists" in request.DESCRIPTOR.fields_by_name:
            names = ["*"]  # a check of every list
        self._note_lists(names)

    def _note_lists(self, names: Sequence[str]) -> None:
        position = 0
        while len(self.lists) < LOG_LISTS_SHOWN and position < len(names):
            name = names[position][: LOG_VALUE_CHARS + 1]  # never pins a huge name for the call's life
            if name not in self.lists:
                self.lists.append(name)
            position += 1
        shown = set(self.lists)
        self.more_lists += sum(1 for name in names[position:] if name not in shown)

    def lists_text(self) -> str:
        """`a,b,c,+997`: the names shown and how many more; `-` when the call named none."""
        shown = [_log_value(name) for name in self.lists] + ([f"+{self.more_lists}"] if self.more_lists else [])
        return ",".join(shown) or "-"

    def saw_response(self, response: Any) -> None:
        if isinstance(response, pb.CheckStreamResult):
            if not response.HasField("response"):
                return
            response = response.response
        if isinstance(response, pb.CheckResponse):
            if response.status != pb.CHECK_PENDING:  # a deferred check has no decision yet
                self.decisions[_decision_name(response.decision)] += 1
            if not self.streaming and not self.request_id:
                self.request_id = response.id  # the caller's request_id, or the one the service made

    def decision(self) -> str:
        """A check's decision; a stream's tally (`accept:3,reject:1`); `-` for other calls."""
        if self.streaming:
            return ",".join(f"{name}:{count}" for name, count in sorted(self.decisions.items())) or "-"
        return next(iter(self.decisions), "-")


def record_call(metrics: Metrics, call: CallNotes, code: str) -> None:
    """Count, time and log a finished call: `code` is its canonical status name (OK, NOT_FOUND, ...)."""
    seconds = time.perf_counter() - call.started
    metrics.requests.labels(call.method, code).inc()
    metrics.request_seconds.labels(call.method).observe(seconds)
    for decision, count in call.decisions.items():
        metrics.decisions.labels(decision).inc(count)
    request_log.info(
        "request id=%s method=%s lists=%s items=%d decision=%s code=%s ms=%.1f",
        _log_value(call.request_id or uuid.uuid4().hex[:16]),
        call.method,
        call.lists_text(),
        call.items,
        call.decision(),
        code,
        seconds * 1000,
    )


class RequestObserver(_Interceptor):
    """Counts, times and logs every call of one service, and refuses calls until the server is ready."""

    def __init__(self, metrics: Metrics, service_name: str, ready: threading.Event) -> None:
        self.metrics = metrics
        self._prefix = f"/{service_name}/"
        self._ready = ready
        self._observed: dict[str, Any] = {}  # per method: its handler never changes, so wrap it once

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        observed = self._observed.get(details.method)
        if observed is None:
            handler = continuation(details)
            if handler is None:
                return None  # an unknown method: never cached, so made-up names cannot grow the table
            observed = self._observed[details.method] = self.observe(handler, details.method)
        return observed

    def observe(self, handler: Any, full_method: str) -> Any:
        """`handler`, counted, timed and logged when it serves one of this service's methods."""
        if not full_method.startswith(self._prefix):
            return handler
        method = full_method[len(self._prefix) :]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _refuse_until_ready(self, context: grpc.ServicerContext, method: str) -> None:
        if not self._ready.is_set():
            _abort(context, Unavailable("the server is still loading its indexes; retry shortly", "NOT_READY"), method)

    def _unary(self, behaviour: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            call = self._begin(method, context, streaming=False)
            try:
                call.saw_request(request)
                self._refuse_until_ready(context, method)
                response = behaviour(request, context)
                call.saw_response(response)
                return response
            finally:
                self._end(call, context)

        return observed

    def _stream(
        self, behaviour: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Callable[..., Iterator[Any]]:
        def observed(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            call = self._begin(method, context, streaming=True)

            def noted() -> Iterator[Any]:
                for request in requests:
                    call.saw_request(request)
                    yield request

            try:
                self._refuse_until_ready(context, method)
                for response in behaviour(noted(), context):
                    call.saw_response(response)
                    yield response
            finally:
                self._end(call, context)

        return observed

    def _unary_stream(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Callable[..., Iterator[Any]]:
        """One request, a stream of replies (an export): logged once, like a unary call."""

        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = self._begin(method, context, streaming=False)
            try:
                call.saw_request(request)
                self._refuse_until_ready(context, method)
                yield from behaviour(request, context)
            finally:
                self._end(call, context)

        return observed

    def _begin(self, method: str, context: grpc.ServicerContext, streaming: bool) -> CallNotes:
        self.metrics.in_flight.inc()
        return CallNotes(method, streaming, _metadata_request_id(context))

    def _end(self, call: CallNotes, context: grpc.ServicerContext) -> None:
        self.metrics.in_flight.dec()
        record_call(self.metrics, call, _status_code(context))


class AdmittedCalls(ThreadPoolExecutor):
    """The worker threads of Lookalike calls, and how many calls are admitted at once.

    Like gRPC's `maximum_concurrent_rpcs`, a call counts from its arrival (waiting for a
    thread included) until its handler returns, so the queue never grows past the limit;
    unlike it, health checks and reflection are not counted.
    """

    def __init__(self, limit: int, **pool: Any) -> None:
        super().__init__(**pool)
        self.limit = limit
        self._admitted = 0
        self._seen = 0
        self._lock = threading.Lock()

    def seen(self) -> int:
        """Admissions and ends so far: unchanged while no call comes or goes."""
        return self._seen

    def admit(self) -> bool:
        """Take a place for an arriving call; False when all `limit` are taken."""
        with self._lock:
            if self._admitted >= self.limit:
                return False
            self._admitted += 1
            self._seen += 1
            return True

    def leave(self, _: object = None) -> None:
        """Give back a place `admit` took (`submit` does it when the call it runs ends)."""
        with self._lock:
            self._admitted -= 1
            self._seen += 1

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Run an admitted call; its place is given back when it ends."""
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self.leave()
            raise
        future.add_done_callback(self.leave)
        return future


class _OnPool:
    """A handler's behaviour that gRPC runs on `pool` rather than on the server's own threads
    (gRPC Python reads `experimental_thread_pool` off the behaviour; grpc_health uses it too)."""

    def __init__(self, behaviour: Callable[..., Any], pool: ThreadPoolExecutor) -> None:
        self._behaviour = behaviour
        self.experimental_thread_pool = pool
        self.experimental_non_blocking = getattr(behaviour, "experimental_non_blocking", False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._behaviour(*args, **kwargs)


def _on_pool(handler: Any, pool: ThreadPoolExecutor) -> Any:
    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    return handler._replace(**{kind: _OnPool(getattr(handler, kind), pool)})


class Admission(_Interceptor):
    """The outermost interceptor: whether a call runs, and on which threads.

    gRPC Python holds a worker thread for a call's whole life (a stream's too), and its own
    concurrency limit counts every service alike: idle streams used to leave health checks
    queued behind them or refused. Here Lookalike calls are admitted up to
    `--max-concurrent-requests` and run on `calls`; the rest are refused at once on `refusals`,
    whose work never waits (their request is never read); health checks run on `health`, so
    they answer whatever the Lookalike calls do. Other services keep the server's own threads.
    """

    def __init__(
        self,
        observer: RequestObserver,
        service_name: str,
        calls: AdmittedCalls,
        refusals: ThreadPoolExecutor,
        health: ThreadPoolExecutor,
    ) -> None:
        self._observer = observer
        self._prefix = f"/{service_name}/"
        self._calls = calls
        self._refusals = refusals
        self._health = health
        self._routed: dict[str, Any] = {}  # per method, like RequestObserver: unknown names are never cached
        self._refusing: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        routed = self._routed.get(details.method)
        if routed is None:
            handler = continuation(details)
            if handler is None:
                return None
            routed = self._routed[details.method] = self._route(handler, details.method)
        if details.method.startswith(self._prefix) and not self._calls.admit():
            return self._refusal(details.method)
        return routed

    def _route(self, handler: Any, full_method: str) -> Any:
        if full_method.startswith(self._prefix):
            return _on_pool(handler, self._calls)
        if full_method.startswith(f"/{HEALTH_SERVICE}/"):
            return _on_pool(handler, self._health)
        return handler

    def _refusal(self, full_method: str) -> Any:
        """A handler that answers RESOURCE_EXHAUSTED without reading the request (a stream handler
        never waits for a message, whatever the method), counted and logged like any call."""
        refusing = self._refusing.get(full_method)
        if refusing is None:
            limit = self._calls.limit
            error = ResourceExhausted(
                f"the server already has {limit} calls in flight (--max-concurrent-requests); retry shortly",
                "TOO_MANY_REQUESTS",
            )

            def refuse(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                _abort(context, error, full_method)
                yield from ()

            handler = grpc.stream_stream_rpc_method_handler(refuse)
            refusing = self._refusing[full_method] = _on_pool(
                self._observer.observe(handler, full_method), self._refusals
            )
        return refusing

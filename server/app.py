"""Assembling and running the server: store, indexes, servicer, health, reflection, shutdown."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from client.errors import LookalikeError
from client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from index import configure_threads
from server.api import SERVICE, LookalikeServicer, MalformedRequestInterceptor, webhook_body
from server.auth import Access, is_loopback_listen, require_safe_listen, server_credentials
from server.checks import CheckLedger
from server.config import ServerConfig, parse_config
from server.feedback import FeedbackBook
from server.flood import FloodSettings
from server.indexes import SNAPSHOT_SHARE
from server.metrics import Metrics
from server.observability import RequestObserver
from server.service import LookalikeService
from server.store import VERIFY_HINT, StorageFull, Store
from server.webhooks import WebhookOutbox
from server.workers import FingerprintWorkers

log = logging.getLogger("lookalike")


@dataclass
class RunningServer:
    """A started server and what it needs to stop cleanly."""

    server: grpc.Server
    port: int
    service: LookalikeService
    health: health.HealthServicer
    executor: ThreadPoolExecutor
    _stop_snapshots: threading.Event
    _snapshotter: threading.Thread | None = None
    metrics_http: WSGIServer | None = None
    """The `/metrics` endpoint when `--metrics-listen` is set."""
    checks: CheckLedger | None = None
    """Stored and deferred checks, webhooks, the expiry sweep."""

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_http is None else int(self.metrics_http.server_address[1])

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish, snapshot indexes, close LMDB."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        _close_http(self.metrics_http)
        if self.checks is not None:
            self.checks.stop()
        self._stop_snapshots.set()
        if self._snapshotter is not None:
            self._snapshotter.join()
        self.executor.shutdown(wait=True)
        self.service.workers.shutdown()
        self.service.indexes.wait_for_rebuilds(grace)
        try:
            saved = self.service.indexes.snapshot_all()
            log.info("stopped; %d index snapshots written", saved)
        except Exception as error:  # noqa: BLE001 - snapshots only shorten the next start
            log.error("stopped; index snapshots not written (%s): the next start replays the change log", error)
        finally:
            self.service.store.close()


def _close_http(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def create_server(config: ServerConfig, on_listening: Callable[[int], None] | None = None) -> RunningServer:
    """Bind, load indexes, then report SERVING; tests pass port 0 and read `.port`.

    `on_listening(port)` runs once calls are accepted but before the indexes load:
    the window in which health says NOT_SERVING and calls get UNAVAILABLE.
    """
    configure_threads(1)
    metrics = Metrics()
    metrics_http = metrics.serve(config.metrics_listen) if config.metrics_listen else None
    try:
        store = Store(config.data, config.map_size)
    except BaseException:
        _close_http(metrics_http)
        raise
    access = Access(store)
    try:
        require_safe_listen(config.listen, access)
        credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
    except LookalikeError:
        store.close()
        _close_http(metrics_http)
        raise
    if access.open:
        log.warning(
            "no API keys exist: every call is accepted without a key, so the server listens on loopback only; "
            "create the first (admin) key with `lookalike keys create --role admin`"
        )
    if credentials is None and not is_loopback_listen(config.listen):
        log.warning("listening on %s without TLS: API keys and images cross the network in clear", config.listen)
    models = sorted({record.model for record in store.lists()} | {config.default_model})
    workers = FingerprintWorkers(config.max_pixels, config.workers, models)
    flood = FloodSettings(
        config.flood_min_matches, config.flood_factor, config.flood_short_window, config.flood_long_window
    )
    service = LookalikeService(
        store,
        workers,
        config.default_model,
        config.cpu_slots,
        metrics,
        flood=flood,
        allow_margin=config.allow_margin,
        scan_budgets=(config.vector_scan_budget, config.pdq_scan_budget),
    )
    metrics.watch_lists(service.list_sizes)
    checks = CheckLedger(store, service, config, WebhookOutbox(store, config, metrics), webhook_body)
    metrics.watch_queues(service.flood.counts_by_list, lambda: checks.pending, lambda: checks.outbox.pending)
    ready = threading.Event()
    # FAISS's thread count is per thread (OpenMP): each thread that may search sets its own, or spins up a team.
    executor = ThreadPoolExecutor(
        max_workers=max(2, 2 * config.cpu_slots),
        thread_name_prefix="fingerprint",
        initializer=configure_threads,
        initargs=(1,),
    )
    options = [
        ("grpc.max_receive_message_length", config.max_request_bytes),
        ("grpc.max_send_message_length", config.max_request_bytes),
    ]
    server = grpc.server(
        ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix="grpc", initializer=configure_threads, initargs=(1,)
        ),
        options=options,
        interceptors=[RequestObserver(metrics, SERVICE, ready), MalformedRequestInterceptor()],
        # Checked before a call is queued for a worker: past it, RESOURCE_EXHAUSTED at once.
        maximum_concurrent_rpcs=config.max_concurrent_requests,
    )
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    servicer = LookalikeServicer(service, config, executor, access, checks=checks, feedback=FeedbackBook(store))
    pb_grpc.add_LookalikeServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError as error:
        workers.shutdown()
        store.close()
        _close_http(metrics_http)
        raise SystemExit(f"cannot listen on {config.listen}: {error}") from None
    server.start()
    if on_listening is not None:
        on_listening(port)
    service.load()
    checks.start()
    ready.set()
    metrics.ready.set(1)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop_snapshots = threading.Event()
    running = RunningServer(
        server,
        port,
        service,
        health_servicer,
        executor,
        stop_snapshots,
        metrics_http=metrics_http,
        checks=checks,
    )
    running._snapshotter = threading.Thread(
        target=_snapshot_loop, args=(service, config, stop_snapshots), name="snapshots", daemon=True
    )
    running._snapshotter.start()
    return running


def _snapshot_loop(service: LookalikeService, config: ServerConfig, stop: threading.Event) -> None:
    """Snapshot indexes that fell far behind, so a restart replays little."""
    while not stop.wait(config.snapshot_interval):
        try:
            service.indexes.snapshot_all(config.snapshot_min_changes, SNAPSHOT_SHARE)
        except StorageFull:
            pass  # the store logged it once; a snapshot only shortens the next start, so it waits for room
        except Exception:
            log.exception("index snapshot failed; will retry")


def main(argv: Sequence[str] | None = None) -> int:
    """`lookalike serve`: run until SIGTERM or SIGINT, then shut down gracefully."""
    config = parse_config(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        running = create_server(config)
    except LookalikeError as error:
        log.error("cannot start: %s", error.message.replace(VERIFY_HINT, f"run `lookalike verify {config.data}`"))
        return 1
    log.info("serving on %s (port %d), data in %s", config.listen, running.port, config.data.resolve())
    if running.metrics_port is not None:
        log.info("metrics at http://%s/metrics (port %d)", config.metrics_listen, running.metrics_port)
    stopping.wait()
    log.info("shutting down (grace %.0f s)", config.grace)
    running.stop(config.grace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Assembling and running the server: store, indexes, servicer, health, reflection, the HTTP API, shutdown."""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from lookalike.client.errors import FailedPrecondition, LookalikeError
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.index import configure_threads
from lookalike.server.api import SERVICE, LookalikeServicer, MalformedRequestInterceptor
from lookalike.server.auth import Access, TlsFiles, is_loopback_listen, require_safe_listen, tls_files
from lookalike.server.checks import CheckLedger
from lookalike.server.cluster import Cluster
from lookalike.server.config import ServerConfig, parse_config
from lookalike.server.embedder import model_batcher
from lookalike.server.feedback import FeedbackBook
from lookalike.server.flood import FloodSettings
from lookalike.server.http.app import HttpServer, bind, build_app
from lookalike.server.http.context import HttpContext
from lookalike.server.indexes import SNAPSHOT_SHARE
from lookalike.server.memory import map_large_blocks_apart, trim_when_quiet
from lookalike.server.messages import webhook_body, webhook_headers
from lookalike.server.metrics import Metrics
from lookalike.server.observability import Admission, AdmittedCalls, RequestObserver
from lookalike.server.operations import Operations
from lookalike.server.service import LookalikeService
from lookalike.server.shared_state import NodeState, node_state
from lookalike.server.storage.errors import VERIFY_HINT, StorageFull
from lookalike.server.storage.store import Store
from lookalike.server.webhooks import WebhookOutbox
from lookalike.server.workers import FingerprintWorkers

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
    call_threads: tuple[ThreadPoolExecutor, ...] = ()
    """The worker threads gRPC runs calls on (Lookalike calls, refusals, health, the rest)."""
    operations: Operations | None = None
    """What every transport calls; `access` turns a credential into the caller operations take."""
    access: Access | None = None
    http: HttpServer | None = None
    """The HTTP/JSON API (`--http-listen`; None when off)."""
    cluster: Cluster | None = None
    """This node's part in a cluster (`--cluster`); None: a single node."""

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_http is None else int(self.metrics_http.server_address[1])

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish, snapshot indexes, close LMDB."""
        self.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.begin_stop()  # both transports wind down together
        self.server.stop(grace).wait()
        if self.http is not None:
            self.http.stop()
        for threads in self.call_threads:
            threads.shutdown(wait=False)
        _close_http(self.metrics_http)
        if self.checks is not None:
            self.checks.stop()
        self._stop_snapshots.set()
        if self._snapshotter is not None:
            self._snapshotter.join()
        if self.cluster is not None:
            self.cluster.close()
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


def _serve_metrics(metrics: Metrics, listen: str) -> WSGIServer:
    """Serve `/metrics` over HTTP on HOST:PORT (port 0: any free one) in a daemon thread.

    OSError when the address cannot be bound (the caller words it, as for `--listen`)."""
    host, _, port = listen.rpartition(":")
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=metrics.registry)
    except (ValueError, OverflowError) as error:
        raise FailedPrecondition(
            f"cannot serve metrics on {listen!r}: {error}; give --metrics-listen as HOST:PORT", "LISTEN_FAILED"
        ) from None
    return server


def _server_credentials(files: TlsFiles | None) -> grpc.ServerCredentials | None:
    """gRPC's TLS from the files read (None: no TLS); a client CA makes client certificates required."""
    if files is None:
        return None
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)],
        root_certificates=files.client_ca,
        require_client_auth=files.client_ca is not None,
    )


def _close_http(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


def create_server(
    config: ServerConfig, on_listening: Callable[[int], None] | None = None, shared: NodeState | None = None
) -> RunningServer:
    """Bind, load indexes, then report SERVING; tests pass port 0 and read `.port`.

    `on_listening(port)` runs once calls are accepted but before the indexes load:
    the window in which health says NOT_SERVING and calls get UNAVAILABLE. `shared`: the node state
    cluster mode shares (`shared_state.node_state`); None: a single node's own.
    """
    configure_threads(1)
    map_large_blocks_apart()
    metrics = Metrics()
    try:
        metrics_http = _serve_metrics(metrics, config.metrics_listen) if config.metrics_listen else None
    except OSError as error:
        raise _cannot_listen(config.metrics_listen, "--metrics-listen", error) from None
    cluster: Cluster | None = None
    try:
        if config.cluster:
            cluster = Cluster(config)
            cluster.restore_if_new(config.data)
        store = Store(config.data, config.map_size)
        if cluster is not None:
            cluster.install_if_trimmed(store)
    except BaseException:
        if cluster is not None:
            cluster.close()
        _close_http(metrics_http)
        raise
    access = Access(store)
    http_on = config.http_listen.lower() != "off"
    try:
        require_safe_listen(config.listen, access)
        if http_on:
            require_safe_listen(config.http_listen, access, "--http-listen 127.0.0.1:8080")
        credentials = _server_credentials(tls_files(config.tls_cert, config.tls_key, config.tls_client_ca))
    except LookalikeError:
        if cluster is not None:
            cluster.close()
        store.close()
        _close_http(metrics_http)
        raise
    if access.open:
        log.warning(
            "no API keys exist: every call is accepted without a key, so the server listens on loopback only; "
            "create the first (admin) key with `lookalike keys create --role admin`"
        )
    for listen in (config.listen, config.http_listen) if http_on else (config.listen,):
        if credentials is None and not is_loopback_listen(listen):
            log.warning("listening on %s without TLS: API keys and images cross the network in clear", listen)
    models = sorted({record.model for record in store.lists()} | {config.default_model})
    batcher = model_batcher(config.device, config.embed_batch, config.embed_window, models, config.cpu_slots)
    workers = FingerprintWorkers(config.max_pixels, config.workers, models, batcher)
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
    service.writes.on_keys_changed(access.reload)
    if shared is None and cluster is not None:
        shared = _shared_state(cluster, config)
    if shared is not None and shared.flood is not None:
        service.flood.share(shared.flood)
    metrics.watch_lists(service.list_sizes)
    if cluster is not None:
        cluster.attach(service.writes)
        service.writer = cluster
        metrics.watch_replication(cluster.applied, cluster.lag)
    try:
        outbox = WebhookOutbox(store, config, metrics, webhook_headers, None if shared is None else shared.webhooks)
        joins_later = cluster is not None and shared is None
        checks = CheckLedger(store, service, config, outbox, webhook_body, shared, joins_later=joins_later)
    except BaseException:  # e.g. making the webhook secret found the disk full
        workers.shutdown()
        if cluster is not None:
            cluster.close()
        store.close()
        _close_http(metrics_http)
        raise
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
        # gRPC shares a port with any other server that asks by default: half the connections would then
        # reach a second, empty server that accepts every image. A taken port must fail the start instead.
        ("grpc.so_reuseport", 0),
    ]
    calls = AdmittedCalls(
        config.max_concurrent_requests,
        max_workers=config.threads,
        thread_name_prefix="grpc",
        initializer=configure_threads,
        initargs=(1,),
    )
    refusals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpc-refusals")
    health_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-health")
    other_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-other")  # reflection
    observer = RequestObserver(metrics, SERVICE, ready)
    server = grpc.server(
        other_threads,
        options=options,
        # No `maximum_concurrent_rpcs`: it counts health checks too; Admission limits Lookalike calls alone.
        interceptors=[
            Admission(observer, SERVICE, calls, refusals, health_threads),
            observer,
            MalformedRequestInterceptor(),
        ],
    )
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    operations = Operations(service, config, access, checks, FeedbackBook(store))
    servicer = LookalikeServicer(operations, config, executor, access)
    http_threads = ThreadPoolExecutor(
        max_workers=config.threads, thread_name_prefix="http", initializer=configure_threads, initargs=(1,)
    )
    http_context = HttpContext(operations, access, config, metrics, calls, servicer.streams, ready, http_threads)
    pb_grpc.add_LookalikeServicer_to_server(servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = _listen(server, config.listen, credentials)
        http = _serve_http(http_context, config) if http_on else None
    except LookalikeError:
        server.stop(None)
        workers.shutdown()
        if cluster is not None:
            cluster.close()
        store.close()
        _close_http(metrics_http)
        raise
    server.start()
    if http is not None:
        http.start()
    if on_listening is not None:
        on_listening(port)
    service.load()
    if cluster is not None:
        cluster.start()
    checks.start()
    if cluster is not None and joins_later:
        cluster.when_reachable(partial(_join_cluster, cluster, config, service, outbox, checks))
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
        call_threads=(calls, refusals, health_threads, other_threads, http_threads),
        operations=operations,
        access=access,
        http=http,
        cluster=cluster,
    )
    running._snapshotter = threading.Thread(
        target=_snapshot_loop, args=(service, config, stop_snapshots), name="snapshots", daemon=True
    )
    running._snapshotter.start()
    trimmer = threading.Thread(target=trim_when_quiet, args=(calls.seen, stop_snapshots), name="memory-trim")
    trimmer.daemon = True  # `stop_snapshots` stops it too
    trimmer.start()
    return running


def _serve_http(context: HttpContext, config: ServerConfig) -> HttpServer:
    """The HTTP server on its bound socket (not yet serving), or FAILED_PRECONDITION saying why not."""
    try:
        sock = bind(config.http_listen)
    except OSError as error:
        raise _cannot_listen(config.http_listen, "--http-listen", error) from None
    try:
        return HttpServer(build_app(context), sock, config)
    except BaseException:
        sock.close()
        raise


def _listen(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind `listen` (its port, or 1 for a unix socket), or FAILED_PRECONDITION saying why not."""
    if _unix_socket_answers(listen):
        raise _cannot_listen(listen, "--listen", OSError(errno.EADDRINUSE, "in use"))
    try:
        with _stderr_held() as said:
            port = (
                server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
            )
        os.write(2, said)  # bound: what gRPC said meanwhile (e.g. that one of two addresses was taken) is news
    except RuntimeError:  # grpcio 1.85; older releases return port 0 instead
        port = 0
    if port == 0:
        raise _cannot_listen(listen, "--listen", _bind_error(listen))
    return port


def _cannot_listen(address: str, flag: str, error: OSError | None) -> FailedPrecondition:
    """A start refused on one line: which address, why, and what to do about it."""
    number = None if error is None else error.errno
    if number == errno.EADDRINUSE:
        why = f"the address is in use (is another lookalike serve running? choose another {flag})"
        return FailedPrecondition(f"cannot listen on {address}: {why}", "ADDRESS_IN_USE")
    if number == errno.EADDRNOTAVAIL:
        why = f"no network interface of this machine has that address (choose another {flag})"
    elif number == errno.EACCES:
        why = f"permission denied (ports below 1024 need privileges; choose another {flag})"
    elif error is not None:
        why = f"{error.strerror or error} (check {flag})"
    else:
        why = f"gRPC could not bind it (check {flag}; GRPC_VERBOSITY=debug shows gRPC's reason)"
    return FailedPrecondition(f"cannot listen on {address}: {why}", "LISTEN_FAILED")


def _bind_error(listen: str) -> OSError | None:
    """Why HOST:PORT cannot be bound, tried with a plain socket: gRPC's error does not say (None: no error now)."""
    host, _, port = listen.rpartition(":")
    if listen.startswith("unix:") or not port.isdigit():
        return None
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, protocol, _, address in found:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
                probe.bind(address)
    except OSError as error:
        return error
    return None


def _unix_socket_answers(listen: str) -> bool:
    """Whether a server already listens on this unix socket: gRPC would replace its file and take its callers."""
    if not listen.startswith("unix:"):
        return False
    path = listen.removeprefix("unix:").removeprefix("//")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@contextmanager
def _stderr_held() -> Iterator[bytearray]:
    """Hold what is written to stderr meanwhile, in the bytes yielded once the block ends: gRPC's core
    logs a failed bind there itself, a line of its own beside the one `lookalike serve` prints."""
    said = bytearray()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            said += held.read()


def _snapshot_loop(service: LookalikeService, config: ServerConfig, stop: threading.Event) -> None:
    """Snapshot indexes that fell far behind, so a restart replays little."""
    while not stop.wait(config.snapshot_interval):
        try:
            service.indexes.snapshot_all(config.snapshot_min_changes, SNAPSHOT_SHARE)
        except StorageFull:
            pass  # the store logged it once; a snapshot only shortens the next start, so it waits for room
        except Exception:
            log.exception("index snapshot failed; will retry")


SHUTDOWN_DUMP_SECONDS = 30.0
"""How long past its grace period a shutdown may run before every thread's stack goes to stderr (the log)."""


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
    if running.cluster is not None:
        log.info("node %s of the cluster at %s", running.cluster.node, config.cluster)
    if running.metrics_port is not None:
        log.info("metrics at http://%s/metrics (port %d)", config.metrics_listen, running.metrics_port)
    if running.http is not None:
        scheme = "https" if running.http.tls else "http"
        address = f"{config.http_listen.rpartition(':')[0]}:{running.http.port}"
        log.info("HTTP API at %s://%s/v1, docs at /v1/docs (http port %d)", scheme, address, running.http.port)
        log.info("dashboard at %s://%s/ (open it in a browser; log in with an API key)", scheme, address)
    stopping.wait()
    log.info("shutting down (grace %.0f s)", config.grace)
    faulthandler.dump_traceback_later(config.grace + SHUTDOWN_DUMP_SECONDS)  # a hung shutdown says where
    running.stop(config.grace)
    faulthandler.cancel_dump_traceback_later()
    return 0



def _shared_state(cluster: Cluster, config: ServerConfig) -> NodeState | None:
    """The node state a cluster shares through JetStream; None (this node's own, as a single node keeps it)
    when NATS cannot be reached at start-up, so checks are served meanwhile; `_join_cluster` shares it once
    NATS answers."""
    try:
        return node_state(cluster.log, cluster.node, config.check_retention)
    except LookalikeError as error:
        log.warning(
            "NATS is unreachable (%s): deferred checks, stored checks, webhooks and the flood guard stay on "
            "this node until NATS answers",
            error,
        )
        return None


def _join_cluster(
    cluster: Cluster, config: ServerConfig, service: LookalikeService, outbox: WebhookOutbox, checks: CheckLedger
) -> None:
    """Share the node state a start without NATS kept on this node, once NATS answers (raises until then)."""
    shared = node_state(cluster.log, cluster.node, config.check_retention)
    if shared.flood is not None:
        service.flood.share(shared.flood)
    outbox.share(shared.webhooks)
    checks.join(shared)
    log.info(
        "NATS answers: deferred checks, stored checks, webhooks and the flood guard's counts are shared with the "
        "cluster from now on (checks deferred here meanwhile run here, and every check stored here meanwhile is "
        "shared; the flood guard goes on from the cluster's counts, without the matches counted here alone)"
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""The server's settings: one frozen object from flags, then `LOOKALIKE_*` environment, then defaults."""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from lookalike.index.list_index import PDQ_SCAN_BUDGET, VECTOR_SCAN_BUDGET
from lookalike.server.embedder import DEVICE_CPU, DEVICES, GPU_BATCH, MODELS
from lookalike.server.scoring import DEFAULT_MODEL

ENV_PREFIX = "LOOKALIKE_"
MiB = 1024 * 1024


def usable_cores() -> int:
    """Cores this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    return max(1, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    data: Path = Path("lookalike-data")
    map_size: int = 64 * 1024 * MiB
    """LMDB map size: address space reserved, not disk used."""
    max_request_bytes: int = 32 * MiB
    max_pixels: int = 64_000_000
    threads: int = 16
    """Worker threads of Lookalike calls (requests in flight); health checks have threads of their own."""
    cpu_slots: int = usable_cores()
    """Images fingerprinted at once: one per core, more only oversubscribes."""
    workers: int = usable_cores()
    """Fingerprint worker processes; 0 fingerprints in the server process (one interpreter lock)."""
    default_model: str = DEFAULT_MODEL
    device: str = DEVICE_CPU
    """Where the models run: `cpu` (in the fingerprint workers) or `cuda` (one GPU, batched across checks)."""
    embed_batch: int = 0
    """Pictures one inference takes at most, across concurrent checks; 0: GPU_BATCH on a GPU, no batching on the CPU."""
    embed_window: float = 0.002
    """Seconds a picture may wait for others to share its inference."""
    allow_private_urls: bool = False
    url_timeout: float = 10.0
    url_max_bytes: int = 32 * MiB
    url_max_redirects: int = 3
    snapshot_interval: float = 60.0
    """Seconds between checks for index snapshots to write."""
    snapshot_min_changes: int = 1000
    vector_scan_budget: int = VECTOR_SCAN_BUDGET
    pdq_scan_budget: int = PDQ_SCAN_BUDGET
    grace: float = 10.0
    """Seconds in-flight requests get at shutdown."""
    log_level: str = "INFO"
    tls_cert: str = ""
    """PEM certificate chain; with `tls_key`, the server speaks TLS only."""
    tls_key: str = ""
    tls_client_ca: str = ""
    """PEM CA bundle: when set, clients must present a certificate it signed."""
    max_batch_images: int = 100_000
    """Images one AddEntries/CheckStream stream may carry; a client with more opens another stream."""
    max_concurrent_requests: int = 64
    """Calls in flight (running or waiting for a worker thread); past it new calls are refused at once."""
    max_streams_per_key: int = 4
    """Streams one API key may hold open at once: each holds a worker thread for its whole life."""
    stream_idle_timeout: float = 60.0
    """Seconds a stream may send nothing while the server owes it no reply; then it is ended."""
    metrics_listen: str = ""
    """HOST:PORT of the Prometheus metrics endpoint; empty: off."""
    http_listen: str = "127.0.0.1:8080"
    """HOST:PORT of the HTTP/JSON API (and dashboard); "off": no HTTP server."""
    check_retention: float = 7 * 86400.0
    """Seconds a check's result (never its image) is kept for GetCheck, feedback and calibration."""
    deferred_workers: int = 2
    """Threads that run deferred checks (the fingerprinting itself still takes a CPU slot)."""
    max_pending_checks: int = 10_000
    """Deferred checks waiting at once (their images are stored until run); more are refused."""
    sweep_interval: float = 60.0
    """Seconds between passes that delete expired checks and save flood-guard rates."""
    webhook_secret: str = ""
    """Key of the webhook signatures; empty: one is made once and kept in the data folder."""
    webhook_max_attempts: int = 8
    webhook_backoff: float = 5.0
    """Seconds before the first retry of a webhook; doubled each time, with jitter."""
    webhook_backoff_max: float = 3600.0
    webhook_timeout: float = 10.0
    allow_margin: float = 0.1
    """How much better than the best allow-list match a disallow match must score to keep a reject."""
    flood_min_matches: int = 25
    """Reject-level matches of one entry within the short window before the flood guard may trip; 0: off."""
    flood_factor: float = 20.0
    """The guard trips when an entry's recent match rate exceeds its usual rate this many times."""
    flood_short_window: float = 600.0
    flood_long_window: float = 86400.0
    cluster: str = ""
    """NATS servers of the cluster's change log, `nats://HOST:PORT[,nats://…]`; empty: a single node."""
    node: str = ""
    """This node's name in the cluster; empty: the host name."""
    cluster_snapshot_every: int = 10_000
    """Changes applied since the last cluster snapshot before the node holding the lease takes another."""
    cluster_snapshot_interval: float = 60.0
    """Seconds between looks at whether a cluster snapshot is due."""


_HELP = {
    "listen": "HOST:PORT to listen on",
    "data": "data folder (LMDB)",
    "map_size": "LMDB map size in bytes",
    "max_request_bytes": "largest request message in bytes",
    "max_pixels": "largest image in pixels (width × height)",
    "threads": "gRPC worker threads",
    "cpu_slots": "images fingerprinted at once",
    "workers": "fingerprint worker processes, one per core; 0: in the server process",
    "default_model": f"model of lists created without one ({', '.join(MODELS)})",
    "device": f"where the models run: {' or '.join(DEVICES)} (a GPU; the CPU, with one log line, when none is usable)",
    "embed_batch": (
        f"most pictures one model inference takes, across concurrent checks (0: {GPU_BATCH} with --device cuda, "
        "none on the CPU, where each fingerprint worker runs the model)"
    ),
    "embed_window": "seconds a picture waits for others to share its inference (with batching)",
    "allow_private_urls": "let the server fetch image URLs on loopback/private addresses",
    "url_timeout": "seconds allowed for fetching an image URL",
    "url_max_bytes": "largest image fetched from a URL in bytes",
    "url_max_redirects": "redirects followed when fetching a URL",
    "snapshot_interval": "seconds between index snapshot passes",
    "snapshot_min_changes": "changes after which a list's index is snapshotted",
    "vector_scan_budget": "embedding codes compared per query view on lists past 20 000 entries (recall against CPU)",
    "pdq_scan_budget": "PDQ hashes compared per query variant on lists past 200 000 entries, until hash tables are up",
    "grace": "seconds in-flight requests get at shutdown",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "tls_cert": "PEM certificate (chain) for TLS; needs --tls-key",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA certificates; when given, clients must present a certificate signed by one",
    "max_batch_images": "most images one AddEntries/CheckStream stream may carry",
    "max_concurrent_requests": "calls in flight at once; more are refused with RESOURCE_EXHAUSTED",
    "max_streams_per_key": "streams one API key may hold open at once (below --threads and --max-concurrent-requests)",
    "stream_idle_timeout": "seconds a stream may send nothing (while owed no reply) before the server ends it",
    "metrics_listen": "HOST:PORT serving Prometheus metrics at /metrics, e.g. 127.0.0.1:9464 (empty: off)",
    "http_listen": "HOST:PORT serving the HTTP/JSON API under /v1 (same keys, limits and TLS as gRPC); off: none",
    "check_retention": "seconds check results are kept (for GetCheck, feedback and calibration)",
    "deferred_workers": "threads running deferred checks",
    "max_pending_checks": "deferred checks waiting at once; more are refused with RESOURCE_EXHAUSTED",
    "sweep_interval": "seconds between passes deleting expired checks",
    "webhook_secret": "HMAC-SHA256 key signing webhooks (empty: made once, kept in the data folder)",
    "webhook_max_attempts": "attempts to deliver one webhook before giving up",
    "webhook_backoff": "seconds before a webhook's first retry; doubled each retry, with jitter",
    "webhook_backoff_max": "longest wait between webhook retries in seconds",
    "webhook_timeout": "seconds allowed for one webhook POST",
    "allow_margin": "score by which a disallow match must beat the best allow-list match to keep a reject",
    "flood_min_matches": "reject-level matches of one entry in the short window before the flood guard trips (0: off)",
    "flood_factor": "flood guard trips when an entry's recent match rate exceeds its usual rate this many times",
    "flood_short_window": "seconds of the flood guard's recent-rate window",
    "flood_long_window": "seconds of the flood guard's usual-rate window",
    "cluster": "NATS JetStream servers of a cluster, nats://HOST:PORT[,nats://HOST:PORT…] (empty: a single node)",
    "node": "this node's name in the cluster (empty: the host name)",
    "cluster_snapshot_every": "changes after which one node snapshots the replicated data for new nodes (cluster)",
    "cluster_snapshot_interval": "seconds between looks at whether a cluster snapshot is due",
}


NODE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def cluster_urls(text: str) -> list[str]:
    """The NATS URLs of `--cluster` (none when empty); ValueError saying what is wrong with one."""
    urls = [part.strip() for part in text.split(",")] if text.strip() else []
    for url in urls:
        parsed = urlsplit(url)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname or port is None or parsed.path:
            raise ValueError(f"{url!r} is not nats://HOST:PORT (e.g. nats://127.0.0.1:4222)")
    return urls


def node_name(config: ServerConfig) -> str:
    """`--node`, else the host name (its first label, in the characters a node name allows)."""
    return config.node or re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64] or "node"


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags win over `LOOKALIKE_<NAME>` variables, which win over defaults."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="lookalike serve", description="Run the Lookalike gRPC server.")
    defaults = ServerConfig()
    for item in fields(ServerConfig):
        flag = "--" + item.name.replace("_", "-")
        env_name = ENV_PREFIX + item.name.upper()
        default = getattr(defaults, item.name)
        help_text = f"{_HELP[item.name]} (env {env_name}; default {default if default != '' else 'none'})"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    args = parser.parse_args(list(argv))
    values: dict[str, object] = {}
    for item in fields(ServerConfig):
        raw = getattr(args, item.name)
        if raw is None:
            raw = environ.get(ENV_PREFIX + item.name.upper())
        if raw is None:
            continue
        default = getattr(defaults, item.name)
        try:
            if isinstance(default, bool):
                values[item.name] = raw if isinstance(raw, bool) else _parse_bool(raw)
            elif isinstance(default, int):
                values[item.name] = int(raw)
            elif isinstance(default, float):
                values[item.name] = float(raw)
            elif isinstance(default, Path):
                values[item.name] = Path(raw)
            else:
                values[item.name] = str(raw)
        except ValueError:
            parser.error(f"--{item.name.replace('_', '-')}: invalid value {raw!r}")
    config = ServerConfig(**values)  # type: ignore[arg-type]
    if config.default_model not in MODELS:
        parser.error(f"--default-model must be one of {', '.join(MODELS)}")
    if config.device not in DEVICES:
        parser.error(f"--device must be one of {', '.join(DEVICES)}")
    if config.embed_batch < 0 or not 0 <= config.embed_window <= 1:
        parser.error("--embed-batch must be at least 0 and --embed-window between 0 and 1 second")
    at_least_one = ("max_batch_images", "max_concurrent_requests", "webhook_max_attempts", "max_pending_checks")
    for name in (*at_least_one, "vector_scan_budget", "pdq_scan_budget", "max_streams_per_key"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("threads", "max_concurrent_requests"):
        if config.max_streams_per_key >= getattr(config, name):
            parser.error(
                f"--max-streams-per-key ({config.max_streams_per_key}) must be below --{name.replace('_', '-')} "
                f"({getattr(config, name)}), so that one key's open streams leave room for other callers"
            )
    for name in ("check_retention", "sweep_interval", "webhook_timeout", "flood_short_window", "stream_idle_timeout"):
        if getattr(config, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    try:
        cluster_urls(config.cluster)
    except ValueError as error:
        parser.error(f"--cluster: {error}")
    if config.cluster_snapshot_every < 1 or config.cluster_snapshot_interval <= 0:
        parser.error("--cluster-snapshot-every must be at least 1 and --cluster-snapshot-interval above 0")
    if config.node and not NODE_NAME.match(config.node):
        parser.error(f"--node: {config.node!r} is not 1 to 64 letters, digits, - or _")
    if config.flood_min_matches and config.flood_long_window <= config.flood_factor * config.flood_short_window:
        parser.error(
            "--flood-long-window must exceed --flood-factor × --flood-short-window, or a burst could never "
            "stand out from the usual rate"
        )
    return config

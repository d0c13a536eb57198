"""Prometheus metrics of one server, in a registry of its own.

Several servers in one process (tests) never mix their figures. Request counts
and latencies are recorded by `server.observability`; stage timings and the
fingerprints-started counter where that work happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from lookalike.server.replication import Lag

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ListSize(NamedTuple):
    name: str
    entries: int
    index_bytes: int


class _ListCollector(Collector):
    """Entries and index memory per list, read at scrape time: nothing to keep in step."""

    def __init__(self, sizes: Callable[[], Iterable[ListSize]]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        entries = GaugeMetricFamily("lookalike_list_entries", "Entries on each list", labels=["list"])
        memory = GaugeMetricFamily("lookalike_index_bytes", "Estimated memory of each list's indexes", labels=["list"])
        for size in self._sizes():
            entries.add_metric([size.name], size.entries)
            memory.add_metric([size.name], size.index_bytes)
        yield entries
        yield memory


class _QueueCollector(Collector):
    """Flood-guarded entries per list and the deferred-check and webhook queues, read at scrape time."""

    def __init__(
        self, guarded: Callable[[], dict[str, int]], pending_checks: Callable[[], int], webhooks: Callable[[], int]
    ) -> None:
        self._guarded = guarded
        self._pending_checks = pending_checks
        self._webhooks = webhooks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        guarded = GaugeMetricFamily(
            "lookalike_flood_guarded_entries", "Entries under flood guard (rejects sent to review)", labels=["list"]
        )
        for name, count in sorted(self._guarded().items()):
            guarded.add_metric([name], count)
        yield guarded
        yield GaugeMetricFamily(
            "lookalike_deferred_checks_pending", "Deferred checks queued or running", value=self._pending_checks()
        )
        yield GaugeMetricFamily(
            "lookalike_webhooks_pending", "Webhooks waiting for their first or next attempt", value=self._webhooks()
        )


class _ReplicationCollector(Collector):
    """A cluster node's applied sequence and how far it is behind the change log, read at scrape time."""

    def __init__(self, applied: Callable[[], int], lag: Callable[[], Lag | None]) -> None:
        self._applied = applied
        self._lag = lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "lookalike_applied_sequence", "Last change of the cluster's log this node applied", value=self._applied()
        )
        lag = self._lag()
        if lag is not None:  # NATS unreachable: no head to compare with
            yield GaugeMetricFamily(
                "lookalike_replication_lag_messages", "Changes in the log this node has not applied", value=lag.messages
            )
            yield GaugeMetricFamily(
                "lookalike_replication_lag_seconds",
                "Age of the oldest change this node has not applied",
                value=lag.seconds,
            )


class Metrics:
    """One server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lookalike_requests", "Calls answered, by method and status", ["method", "code"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "lookalike_request_seconds", "Time from call to answer, by method", ["method"], registry=self.registry
        )
        self.in_flight = Gauge("lookalike_requests_in_flight", "Calls being served now", registry=self.registry)
        self.stage_seconds = Histogram(
            "lookalike_stage_seconds",
            "Time per stage of one image: decode, hash, embed, region, frames, thumbnail, keypoints, pdq_search, "
            "vector_search",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.fingerprints_started = Counter(
            "lookalike_fingerprints_started", "Images whose fingerprinting began", registry=self.registry
        )
        self.decisions = Counter(
            "lookalike_check_decisions", "Checks answered, by decision", ["decision"], registry=self.registry
        )
        self.ready = Gauge("lookalike_ready", "1 once every index is loaded", registry=self.registry)
        self.flood_downgrades = Counter(
            "lookalike_flood_downgrades",
            "Reject-level matches sent to review because their entry is under flood guard",
            ["list"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "lookalike_webhook_deliveries",
            "Webhook attempts by outcome: delivered, retry (will try again), failed (gave up), refused (address)",
            ["outcome"],
            registry=self.registry,
        )

    def observe_stage(self, name: str, seconds: float) -> None:
        """Record a stage timed elsewhere (in a fingerprint worker process)."""
        self.stage_seconds.labels(name).observe(seconds)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the work on an image."""
        with self.stage_seconds.labels(name).time():
            yield

    def watch_lists(self, sizes: Callable[[], Iterable[ListSize]]) -> None:
        """Report entries and index memory per list, asking `sizes` at every scrape."""
        self.registry.register(_ListCollector(sizes))

    def watch_queues(
        self, guarded: Callable[[], dict[str, int]], pending_checks: Callable[[], int], webhooks: Callable[[], int]
    ) -> None:
        """Report flood-guarded entries per list and the deferred-check and webhook queues at every scrape."""
        self.registry.register(_QueueCollector(guarded, pending_checks, webhooks))

    def watch_replication(self, applied: Callable[[], int], lag: Callable[[], Lag | None]) -> None:
        """Report a cluster node's applied sequence and its lag (messages, seconds) at every scrape."""
        self.registry.register(_ReplicationCollector(applied, lag))

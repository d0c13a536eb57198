"""Cluster mode (issue #19): this node's part in a cluster whose nodes share one change log in NATS JetStream.

`Cluster` holds the change log, the node's name and the follower that applies the log to this node, in
order, through the one write path (`WritePath.apply(change, sequence)`, which stores the sequence in the
change's own LMDB transaction). It is also the service's `Writes` in cluster mode: a write is encoded,
appended to the log under a de-duplication id (so the log's own retries store it once), and answered with
the outcome this node's follower got when it applied that sequence: the entries' outcomes, or the domain
error of a refusal (say a list another node created first), which every node meets alike, so all end with
the same data. Validation, decoding and fingerprinting happen before, on the node that took the call; the
picture never travels.

Reads never wait on NATS: checks are answered from this node's replica. A check that carries a consistency
token waits (bounded) until this node has applied it (`wait_applied`).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import overload

from nats.aio.msg import Msg

from lookalike.client.errors import Internal, InvalidArgument, LookalikeError, Unavailable
from lookalike.index import configure_threads
from lookalike.server.changes import (
    Change,
    EntriesAdded,
    EntryConfirmed,
    EntryRemoved,
    KeyCreated,
    KeyRevoked,
    ListCreated,
    ListDeleted,
    ListUpdated,
    decode_change,
    encode_change,
    split_to_fit,
)
from lookalike.server.config import ServerConfig, cluster_urls, node_name
from lookalike.server.records import AddOutcome, EntryRecord, KeyRecord, ListRecord
from lookalike.server.replication import ChangeLog, Follower, Lag
from lookalike.server.service import wait_budget
from lookalike.server.storage.errors import StorageFull
from lookalike.server.storage.snapshot import install_snapshot, is_empty, restore_snapshot, write_snapshot
from lookalike.server.storage.store import AlreadyApplied, Store
from lookalike.server.writes import REPLICA_BEHIND, Outcome, WritePath, behind

log = logging.getLogger(__name__)

APPLY_WAIT_S = 30.0
"""How long a write waits at most for this node to apply what the log stored (the call's deadline may cut it)."""

CONNECT_WAIT_S = 2.0
"""How long the start waits for NATS: a node starts without it, serves checks, and refuses writes until then."""

DEDUP_HEADER = "Nats-Msg-Id"

JOIN_RETRY_S = 1.0
"""How often a node that started without NATS tries again to share its node state (`when_reachable`)."""


class Cluster:
    """The change log, this node's name, and the follower applying the log; see the module's doc.

    Made before the store opens (`restore_if_new` may fill an empty data folder from a snapshot), given the
    node's write path once there is one (`attach`), and started once the indexes are loaded (`start`)."""

    def __init__(self, config: ServerConfig, connect_wait: float = CONNECT_WAIT_S) -> None:
        try:
            urls = cluster_urls(config.cluster)
        except ValueError as error:
            raise InvalidArgument(f"--cluster: {error}", "CLUSTER_URL_INVALID") from None
        if not urls:
            raise InvalidArgument("cluster mode needs --cluster nats://HOST:PORT", "CLUSTER_URL_INVALID")
        self.node = node_name(config)
        self._snapshot_every = config.cluster_snapshot_every
        self._snapshot_interval = config.cluster_snapshot_interval
        self.log = ChangeLog(urls, node=self.node, connect_wait=connect_wait)
        self._writes: WritePath | None = None
        self._changed = threading.Condition()
        self._applied = 0
        self._waiting: dict[str, tuple[Outcome | LookalikeError | None] | None] = {}
        """De-duplication ids of this node's writes in flight → the outcome of their apply, once applied."""
        self._follower: Follower | None = None
        self._stopping = threading.Event()
        self._snapshotter: threading.Thread | None = None
        self._joiner: threading.Thread | None = None

    def restore_if_new(self, folder: Path) -> int | None:
        """Fill an empty data folder from the newest snapshot (so the log need not hold every change since
        the cluster began); the sequence it covers, or None when the folder has data or there is no
        snapshot. A new node that cannot reach NATS starts empty and follows the log once it can."""
        if not is_empty(folder):
            return None
        try:
            latest = self.log.latest_snapshot(folder.parent if folder.parent.exists() else None)
        except Unavailable as error:
            log.warning("a new node, but no snapshot could be read (%s): following the log from its start", error)
            return None
        if latest is None:
            return None
        sequence, reader = latest
        with reader:
            restore_snapshot(reader, folder)
        log.info("restored the replicated data up to change %d from the cluster's newest snapshot", sequence)
        return sequence

    def install_if_trimmed(self, store: Store) -> int | None:
        """When the log no longer holds the changes after this node's applied sequence (trimmed while it was
        down), install the newest snapshot over its replicated data, if it covers them, so the node follows
        the tail from there, fingerprinting nothing again; its node-local data stays. The sequence installed,
        or None: nothing missing, NATS away (the follower decides once it is back), or no snapshot covers the
        gap (the follower then stops with LOG_TRIMMED)."""
        applied = store.applied_sequence()
        try:
            first, last = self.log.kept()
            if applied >= min(first - 1, last):
                return None
            kept = self.log.snapshots()
            if not kept or kept[-1] < first - 1:
                log.error(
                    "this node applied the log up to change %d, the log keeps only changes from %d, and no snapshot "
                    "covers the gap (newest: %s): it serves checks from its data but cannot follow the log; restart "
                    "it once a node that follows the log stored a newer snapshot",
                    applied,
                    first,
                    kept[-1] if kept else "none",
                )
                return None
            latest = self.log.latest_snapshot(store.path)
            if latest is None:
                return None
            with latest[1] as reader:
                installed = install_snapshot(reader, store.environment)
        except Unavailable as error:
            log.warning("whether the log still holds this node's next change is unknown (%s)", error)
            return None
        except LookalikeError as error:  # a full disk, a corrupt snapshot: the old data stays, whole
            log.error("the cluster's snapshot could not be installed over this node's data: %s", error)
            return None
        log.warning(
            "this node applied the log up to change %d but the log keeps only changes from %d: installed the "
            "cluster's snapshot at change %d over its replicated data (its stored checks, webhooks, feedback and "
            "flood guard kept; its indexes are built from the installed entries), following the log from there",
            applied,
            first,
            installed,
        )
        return installed

    def attach(self, writes: WritePath) -> None:
        self._writes = writes
        self._applied = writes.applied()

    def start(self) -> None:
        """Follow the log from the last sequence this node applied (its indexes are loaded by now), and
        look for snapshots to take."""
        self._follower = Follower(
            self.log.connection,
            self.log.stream,
            self._handle,
            self._applied,
            name="follow-changes",
            # Applying adds to FAISS indexes: with OpenMP's default threads each add cost about 30 times
            # the CPU (benchmarks/README.md, Cluster), as on request threads.
            on_start=partial(configure_threads, 1),
        )
        self._snapshotter = threading.Thread(target=self._snapshot_loop, name="cluster-snapshots", daemon=True)
        self._snapshotter.start()

    def when_reachable(self, join: Callable[[], None]) -> None:
        """Call `join` on a thread of its own once NATS answers: every JOIN_RETRY_S until it raises no
        LookalikeError, or the node closes."""

        def keep_trying() -> None:
            while not self._stopping.wait(JOIN_RETRY_S):
                try:
                    join()
                    return
                except LookalikeError as error:
                    log.debug("not joined yet: %s", error)

        self._joiner = threading.Thread(target=keep_trying, name="cluster-join", daemon=True)
        self._joiner.start()

    def close(self) -> None:
        self._stopping.set()
        if self._joiner is not None:
            self._joiner.join()
        if self._snapshotter is not None:
            self._snapshotter.join()
        if self._follower is not None:
            self._follower.stop()
        self.log.close()

    # -- snapshots ----------------------------------------------------------------------------------------------

    def _snapshot_loop(self) -> None:
        while not self._stopping.wait(self._snapshot_interval):
            try:
                self.snapshot_if_due()
            except LookalikeError as error:  # NATS away, disk full: the next look tries again
                log.warning("cluster snapshot not taken: %s", error)
            except Exception:
                log.exception("cluster snapshot failed; will retry")

    def snapshot_if_due(self) -> int | None:
        """When this node holds the snapshot lease and `cluster_snapshot_every` changes were applied since
        the newest snapshot, store a new one and trim the log to what the oldest kept snapshot does not
        cover; the sequence of the snapshot taken, or None."""
        assert self._writes is not None
        if not self.log.try_lease("snapshots", self.node, ttl=2 * self._snapshot_interval + 5):
            return None
        kept = self.log.snapshots()
        store = self._writes.store
        if store.applied_sequence() - (kept[-1] if kept else 0) < self._snapshot_every:
            return None
        with tempfile.TemporaryDirectory(prefix="cluster-snapshot-", dir=store.environment.path) as work:
            written = Path(work) / "snapshot.mdb"
            sequence = write_snapshot(store.environment, written)
            if kept and sequence <= kept[-1]:
                return None
            self.log.put_snapshot(written, sequence)
        oldest = self.log.snapshots()[0]
        if oldest > 0:
            self.log.trim_before(oldest + 1)
        log.info("cluster snapshot at change %d stored; the log keeps the changes after %d", sequence, oldest)
        return sequence

    # -- the follower's thread ------------------------------------------------------------------------------

    def _handle(self, sequence: int, message: Msg) -> None:
        """Apply one record. A refusal is an outcome (every node refuses alike: nothing is written); a full
        disk or a record this server cannot read stops the follower, since skipping it would diverge."""
        assert self._writes is not None
        outcome: Outcome | LookalikeError | None
        try:
            outcome = self._writes.apply(decode_change(message.data), sequence)
        except AlreadyApplied:
            outcome = None
        except StorageFull:
            raise
        except LookalikeError as refusal:
            outcome = refusal
        dedup_id = (message.headers or {}).get(DEDUP_HEADER, "")
        with self._changed:
            self._applied = sequence
            if dedup_id in self._waiting:
                self._waiting[dedup_id] = (outcome,)
            self._changed.notify_all()

    # -- Writes -------------------------------------------------------------------------------------------------

    @overload
    def apply(self, change: ListCreated | ListUpdated | ListDeleted) -> ListRecord: ...
    @overload
    def apply(self, change: EntriesAdded) -> list[AddOutcome | Exception]: ...
    @overload
    def apply(self, change: EntryRemoved | EntryConfirmed) -> EntryRecord: ...
    @overload
    def apply(self, change: KeyCreated | KeyRevoked) -> KeyRecord: ...
    def apply(self, change: Change) -> Outcome:
        """Append the change to the log and answer with what this node's follower made of it. An add too
        large for one message goes as several records, each applied on its own: a failed one reports its
        entries failed, the others keep their outcomes."""
        request = uuid.uuid4().hex
        pieces = split_to_fit(change)
        if not isinstance(change, EntriesAdded) or len(pieces) == 1:
            return self._submit(change, request)
        outcomes: list[AddOutcome | Exception] = []
        for number, piece in enumerate(pieces):
            assert isinstance(piece, EntriesAdded)
            try:
                result = self._submit(piece, f"{request}-{number}")
            except LookalikeError as error:
                result = [error] * len(piece.entries)
            assert isinstance(result, list)
            outcomes.extend(result)
        return outcomes

    def _submit(self, change: Change, dedup_id: str) -> Outcome:
        with self._changed:
            self._waiting[dedup_id] = None
        try:
            sequence = self.log.append(encode_change(change), dedup_id)
            wait = wait_budget(APPLY_WAIT_S)
            with self._changed:
                self._changed.wait_for(lambda: self._waiting[dedup_id] is not None or not self._following(), wait)
                done = self._waiting[dedup_id]
                applied = self._applied
        finally:
            with self._changed:
                self._waiting.pop(dedup_id, None)
        if done is None:
            if not self._following():
                raise self._stopped()
            raise Unavailable(
                f"the change is stored in the cluster's log at sequence {sequence} and will be applied, but this "
                f"node has applied only up to {applied} after {wait:.1f} s: read it back with `after` {sequence}",
                REPLICA_BEHIND,
            )
        (outcome,) = done
        if isinstance(outcome, LookalikeError):
            raise outcome
        if outcome is None:
            raise Internal(f"sequence {sequence} was applied before this node's write reached it")
        return outcome

    def applied(self) -> int:
        return self._applied

    def wait_applied(self, sequence: int, wait: float) -> None:
        started = time.monotonic()
        with self._changed:
            if self._changed.wait_for(lambda: self._applied >= sequence, max(0.0, wait)):
                return
            applied = self._applied
        raise behind(sequence, applied, time.monotonic() - started)

    # -- state ------------------------------------------------------------------------------------------------

    def _following(self) -> bool:
        return self._follower is None or self._follower.running

    def _stopped(self) -> LookalikeError:
        why = self._follower.error if self._follower is not None else None
        return Internal(f"this node stopped applying the cluster's log: {why}", "FOLLOWER_STOPPED")

    def lag(self) -> Lag | None:
        """How far this node is behind the log's head; None while NATS cannot say."""
        try:
            return self.log.lag(self._applied, timeout=1.0)
        except LookalikeError:
            return None

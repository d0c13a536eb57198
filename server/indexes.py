"""The live FAISS index of every list: loaded from snapshots, kept in step with the store.

Writes go store-first: a change is committed to LMDB, then applied to the index
under the same per-list lock, so the index never runs ahead of the store and a
snapshot's checkpoint always names a prefix of the change log. A crash between
commit and apply loses nothing: start-up replays the log after the snapshot.

A list that outgrows its index layout (exact search past a few tens of thousands
of entries, or an IVF trained for a size it has left far behind) is rebuilt in
the background from one consistent read of the store; the old index serves until
the new one has replayed the changes made meanwhile and takes its place.

A large list's PDQ hash tables are never stored: they are built from its codes after a
load (on a thread, so start-up does not wait; the binary IVF answers meanwhile) and
before a rebuilt index takes over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import numpy as np

from lookalike.index import ListIndex, configure_threads
from lookalike.index.list_index import PDQ_SCAN_BUDGET, VECTOR_SCAN_BUDGET, Layout
from lookalike.server.records import EntryRecord, ListRecord
from lookalike.server.storage.schema import OP_ADD
from lookalike.server.storage.store import LoggedChange, Store

log = logging.getLogger(__name__)
BUILD_CHUNK = 10_000
SNAPSHOT_SHARE = 0.01
"""A list is snapshotted once its unsnapshotted changes reach this share of its entries (or
the configured minimum): rewrites stay proportional to change, replays at start-up short."""


def _pdq_codes(entries: Sequence[EntryRecord]) -> np.ndarray:
    return np.frombuffer(b"".join(e.pdq for e in entries), dtype=np.uint8).reshape(-1, 32)


class IndexRegistry:
    """Per-list indexes plus the lock that orders each list's writes."""

    def __init__(
        self,
        store: Store,
        background: bool = True,
        scan_budgets: tuple[int, int] = (VECTOR_SCAN_BUDGET, PDQ_SCAN_BUDGET),
    ) -> None:
        self.store = store
        self.background = background
        """Rebuild outgrown indexes on a thread (False: at once, for tools and tests)."""
        self.scan_budgets = scan_budgets
        """Codes an inverted file compares per query view / PDQ variant: recall against CPU."""
        self._indexes: dict[int, ListIndex] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._rebuilding: dict[int, threading.Thread] = {}
        self._unreadable_snapshots: set[int] = set()
        """Lists whose stored snapshot did not load: the next snapshot pass replaces it, however little changed."""
        self._tabling: list[threading.Thread] = []

    def load_all(self) -> None:
        for record in self.store.lists():
            index = self._indexes[record.uid] = self._tuned(self._load(record))
            if not self.rebuild_if_outgrown(record.uid):
                self._index_pdq_codes(record.name, index)

    def _index_pdq_codes(self, name: str, index: ListIndex) -> None:
        """Build a large list's PDQ hash tables: on a thread when rebuilding in the background."""

        def build() -> None:
            try:
                started = time.perf_counter()
                if index.index_pdq_codes():
                    log.info("list %s: PDQ hash tables built in %.1f s", name, time.perf_counter() - started)
            except Exception:
                log.exception("list %s: building PDQ hash tables failed; its binary IVF keeps answering", name)

        if not self.background:
            build()
            return
        worker = index_thread(build, f"pdq-tables-{name}")
        with self._guard:
            self._tabling = [thread for thread in self._tabling if thread.is_alive()] + [worker]
        worker.start()

    def _load(self, record: ListRecord) -> ListIndex:
        index: ListIndex | None = None
        try:  # a damaged snapshot only costs a rebuild from the entries
            snapshot = self.store.load_snapshot(record.uid)
            if snapshot is not None:
                index = ListIndex.deserialize(snapshot[1], self.store.snapshot_pieces(record.uid))
                if index.change != snapshot[0] or snapshot[0] > record.next_change - 1:
                    raise ValueError(
                        f"it holds change {index.change}, its record {snapshot[0]}, the list's last "
                        f"{record.next_change - 1}"
                    )
        except ValueError as error:  # CorruptRecord too
            log.warning("list %s: snapshot unreadable (%s); rebuilding from entries", record.name, error)
            self._unreadable_snapshots.add(record.uid)
            index = None
        if index is None:
            index = self.build(record.uid)
        else:
            self.replay(record.uid, index)
        log.info("list %s: %d entries indexed (change %d)", record.name, index.pdq_count, index.change)
        return index

    def build(self, uid: int) -> ListIndex:
        """A fresh index of the list in the layout its size deserves, from stored fingerprints
        (no model runs): one pass samples training data, a second adds every entry in chunks."""
        with self.store.list_view(uid) as view:
            count = view.record.entry_count
            layout = Layout.for_size(count, count)
            codes: list[EntryRecord] = []
            vectors: list[np.ndarray] = []
            if layout.training_points:
                sample = list(view.entries(step=max(1, count // layout.training_points)))
                codes = [entry for entry, _ in sample if entry.pdq]
                vectors = [vector for _, vector in sample if vector is not None]
                layout = Layout.for_size(count * len(vectors) // len(sample), count * len(codes) // len(sample))
            index = ListIndex.trained(
                layout,
                _pdq_codes(codes) if codes else None,
                np.stack(vectors) if vectors else None,
            )
            batch: list[tuple[EntryRecord, np.ndarray | None]] = []
            for item in view.entries():
                batch.append(item)
                if len(batch) >= BUILD_CHUNK:
                    self.apply_adds(index, batch, 0)
                    batch = []
            self.apply_adds(index, batch, 0)
            index.change = view.change
        return index

    def replay(self, uid: int, index: ListIndex) -> None:
        """Apply the logged changes the index has not seen, consecutive adds in one batch.

        An entry added and removed since the index's checkpoint is in neither: its add finds
        nothing stored, so its removal is dropped too (an index may count tombstones)."""
        logged = self.store.changes_after(uid, index.change)
        added = {change.seq for change in logged if change.op == OP_ADD}
        changes = [change for change in logged if change.op == OP_ADD or change.seq not in added]
        start = 0
        while start < len(changes):
            end = start + 1
            while end < len(changes) and changes[end].op == changes[start].op and end - start < BUILD_CHUNK:
                end += 1
            self._apply_changes(uid, index, changes[start:end])
            start = end

    def _apply_changes(self, uid: int, index: ListIndex, run: Sequence[LoggedChange]) -> None:
        last = run[-1].number
        seqs = [change.seq for change in run]
        if run[0].op == OP_ADD:
            entries = self.store.entries_by_seq(uid, seqs)
            vectors = self.store.embeddings(uid, seqs)
            self.apply_adds(index, [(entries[seq], vectors.get(seq)) for seq in seqs if seq in entries], last)
        else:
            index.remove(np.array(seqs, dtype=np.int64), last)

    @staticmethod
    def apply_adds(index: ListIndex, items: Sequence[tuple[EntryRecord, np.ndarray | None]], change: int) -> None:
        """Index stored entries: each side gets the entries that have that signal."""
        with_pdq = [entry for entry, _ in items if entry.pdq]
        if with_pdq:
            index.add(np.array([e.seq for e in with_pdq], dtype=np.int64), _pdq_codes(with_pdq), None, change)
        with_vector = [(entry, vector) for entry, vector in items if vector is not None]
        if with_vector:
            ids = np.array([e.seq for e, _ in with_vector], dtype=np.int64)
            index.add(ids, None, np.stack([v for _, v in with_vector]), change)
        index.change = max(index.change, change)

    @contextmanager
    def writing(self, uid: int) -> Iterator[ListIndex | None]:
        """Hold the list's write lock across a store commit and the index update."""
        with self._guard:
            lock = self._locks.setdefault(uid, threading.Lock())
        with lock:
            yield self._indexes.get(uid)

    def created(self, uid: int) -> None:
        with self._guard:
            self._indexes[uid] = self._tuned(ListIndex())

    def dropped(self, uid: int) -> None:
        with self._guard:
            self._indexes.pop(uid, None)

    def _tuned(self, index: ListIndex) -> ListIndex:
        index.set_scan_budgets(*self.scan_budgets)
        return index

    def get(self, uid: int) -> ListIndex | None:
        return self._indexes.get(uid)

    # Rebuilds ---------------------------------------------------------------

    def rebuild_if_outgrown(self, uid: int) -> bool:
        """Start a rebuild of the list's index when its layout no longer fits its size."""
        index = self._indexes.get(uid)
        if index is None or not index.outgrown():
            return False
        with self._guard:
            if uid in self._rebuilding:
                return False
            worker = index_thread(partial(self._rebuild, uid), f"rebuild-{uid}")
            self._rebuilding[uid] = worker
        if self.background:
            worker.start()
        else:
            worker.run()
        return True

    def _rebuild(self, uid: int) -> None:
        try:
            fresh = self.build(uid)
            fresh.index_pdq_codes()
            if self.install(uid, fresh):
                log.info("list #%d: index rebuilt as %s for %d entries", uid, fresh.layout, fresh.vector_count)
        except Exception:
            log.exception("list #%d: index rebuild failed; the current index keeps serving", uid)
        finally:
            with self._guard:
                self._rebuilding.pop(uid, None)

    def install(self, uid: int, fresh: ListIndex) -> bool:
        """Let an index built from an earlier read of the store take over: under the list's write
        lock it first replays every change made since that read. False when the list is gone."""
        with self.writing(uid) as current:
            if current is None:
                return False
            self.replay(uid, fresh)
            with self._guard:
                self._indexes[uid] = self._tuned(fresh)
        return True

    def wait_for_rebuilds(self, timeout: float | None = None) -> None:
        """Wait for index rebuilds and PDQ table builds to finish."""
        with self._guard:
            workers = [*self._rebuilding.values(), *self._tabling]
        for worker in workers:
            if worker.is_alive():
                worker.join(timeout)

    # Snapshots --------------------------------------------------------------

    def snapshot_all(self, min_changes: int = 1, share: float = 0.0) -> int:
        """Persist every index whose unsnapshotted changes reach `min_changes` and `share` of its
        entries; returns how many. A list being rebuilt is skipped: its rebuild replays from
        the change log, which a snapshot would prune."""
        saved = 0
        with self._snapshot_lock:
            for record in self.store.lists():
                # Under the list's write lock: apply_adds adds PDQ codes and vectors in two steps,
                # and a snapshot between them would record the change with its vectors missing.
                with self.writing(record.uid) as index:
                    if index is None or record.uid in self._rebuilding:
                        continue
                    behind = index.change - self.store.snapshot_change(record.uid)
                    wanted = max(1, min_changes, share * max(index.pdq_count, index.vector_count))
                    if behind < wanted and record.uid not in self._unreadable_snapshots:
                        continue
                    snapshot = index.serialize()
                if self.store.save_snapshot(
                    record.uid, snapshot.checkpoint.change, snapshot.blob, snapshot.pieces, snapshot.piece_numbers
                ):
                    index.saved(snapshot)
                    self._unreadable_snapshots.discard(record.uid)
                    saved += 1
        return saved


def index_thread(work: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread (not started) for building or rebuilding an index: FAISS on one OpenMP thread
    there, as on request threads. OpenMP's default team made every add about 30 times costlier on a
    busy box, and a rebuild replays the changes since its read under the list's write lock."""

    def run() -> None:
        configure_threads(1)
        work()

    return threading.Thread(target=run, name=name, daemon=True)

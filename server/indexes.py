"""The live FAISS index of every list: loaded from snapshots, kept in step with the store.

Writes go store-first: a change is committed to LMDB, then applied to the index
under the same per-list lock, so the index never runs ahead of the store and a
snapshot's checkpoint always names a prefix of the change log. A crash between
commit and apply loses nothing: start-up replays the log after the snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from index import ListIndex
from server.store import OP_ADD, EntryRecord, ListRecord, Store

log = logging.getLogger(__name__)


def _pdq_codes(entries: Sequence[EntryRecord]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(e.pdq) for e in entries), dtype=np.uint8).reshape(-1, 32)


class IndexRegistry:
    """Per-list indexes plus the lock that orders each list's writes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._indexes: dict[int, ListIndex] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._snapshot_lock = threading.Lock()

    def load_all(self) -> None:
        for record in self.store.lists():
            self._indexes[record.uid] = self._load(record)

    def _load(self, record: ListRecord) -> ListIndex:
        snapshot = self.store.load_snapshot(record.uid)
        index: ListIndex | None = None
        if snapshot is not None:
            try:
                index = ListIndex.deserialize(snapshot[1])
            except ValueError as error:
                log.warning("list %s: snapshot unreadable (%s); rebuilding from entries", record.name, error)
        if index is None:
            index = self._build(record)
        else:
            self._replay(record.uid, index)
        log.info("list %s: %d entries indexed (change %d)", record.name, index.pdq_count, index.change)
        return index

    def _build(self, record: ListRecord) -> ListIndex:
        """Rebuild from the entries themselves (no snapshot): stored embeddings, no model runs."""
        index = ListIndex()
        batch: list[tuple[EntryRecord, np.ndarray | None]] = []
        for item in self.store.iter_entries(record.uid):
            batch.append(item)
            if len(batch) >= 10_000:
                self.apply_adds(index, batch, 0)
                batch = []
        self.apply_adds(index, batch, 0)
        index.change = record.next_change - 1
        return index

    def _replay(self, uid: int, index: ListIndex) -> None:
        for change in self.store.changes_after(uid, index.change):
            if change.op == OP_ADD:
                entries = self.store.entries_by_seq(uid, [change.seq])
                vectors = self.store.embeddings(uid, [change.seq])
                items = [(entries[change.seq], vectors.get(change.seq))] if change.seq in entries else []
                self.apply_adds(index, items, change.number)
            else:
                index.remove(np.array([change.seq], dtype=np.int64), change.number)

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
            self._indexes[uid] = ListIndex()

    def dropped(self, uid: int) -> None:
        with self._guard:
            self._indexes.pop(uid, None)

    def get(self, uid: int) -> ListIndex | None:
        return self._indexes.get(uid)

    def snapshot_all(self, min_changes: int = 1) -> int:
        """Persist every index that is at least `min_changes` behind the store; returns how many."""
        saved = 0
        with self._snapshot_lock:
            for record in self.store.lists():
                index = self._indexes.get(record.uid)
                if index is None or index.change - self.store.snapshot_change(record.uid) < min_changes:
                    continue
                checkpoint, blob = index.serialize()
                if self.store.save_snapshot(record.uid, checkpoint.change, blob):
                    saved += 1
        return saved

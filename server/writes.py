"""The single write path: every change that must reach every replica is applied here, and only here.

`WritePath.apply(change)` commits a change record (`lookalike.server.changes`) to LMDB in one transaction
(`Store.commit`: its records, its audit record, the list's change log for index snapshots, and the applied
sequence), then brings what this node holds in memory in line: the list's index, the flood guard, the table
of API keys. What depends on stored state (a duplicate, a missing entry, a list that exists, the last admin
key) is decided inside the commit, so every replica decides alike, and comes back as the outcome or as the
change's domain error.

A single node calls `apply` for every write, and its changes are numbered by the store (a local count).
Cluster mode calls it for each record of the change log in order, with the log's sequence numbers: a record
at or below the applied sequence was applied before and changes nothing (AlreadyApplied).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import numpy as np

from lookalike.client.errors import NotFound
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
)
from lookalike.server.flood import FloodGuard
from lookalike.server.indexes import IndexRegistry
from lookalike.server.records import AddOutcome, EntryRecord, KeyRecord, ListRecord
from lookalike.server.storage.store import AlreadyApplied, Store

type Outcome = ListRecord | list[AddOutcome | Exception] | EntryRecord | KeyRecord


class WritePath:
    """Applies changes to one node: its store, its indexes, its flood guard and its listeners."""

    def __init__(self, store: Store, indexes: IndexRegistry, flood: FloodGuard) -> None:
        self.store = store
        self.indexes = indexes
        self.flood = flood
        self._keys_changed: list[Callable[[], None]] = []
        self._applied: list[Callable[[int, Change], None]] = []

    def on_keys_changed(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every change to the API keys (the access table re-reads them)."""
        self._keys_changed.append(listener)

    def on_applied(self, listener: Callable[[int, Change], None]) -> None:
        """Call `listener(sequence, change)` after each change is applied, on the thread that applied it (so
        in order for one thread; writers on several threads may report out of order)."""
        self._applied.append(listener)

    @overload
    def apply(self, change: ListCreated | ListUpdated | ListDeleted, sequence: int | None = None) -> ListRecord: ...
    @overload
    def apply(self, change: EntriesAdded, sequence: int | None = None) -> list[AddOutcome | Exception]: ...
    @overload
    def apply(self, change: EntryRemoved | EntryConfirmed, sequence: int | None = None) -> EntryRecord: ...
    @overload
    def apply(self, change: KeyCreated | KeyRevoked, sequence: int | None = None) -> KeyRecord: ...
    def apply(self, change: Change, sequence: int | None = None) -> Outcome:
        """Apply one change (see the module's doc); `sequence` None numbers it after the last applied.

        Returns the list, the entries' outcomes (each an AddOutcome or its own error), the entry removed or
        confirmed, or the key. Raises the change's domain error when it is refused (nothing changed),
        StorageFull when the disk or map is full, AlreadyApplied for a sequence applied before."""
        if sequence is not None and sequence <= (last := self.store.applied_sequence()):
            raise AlreadyApplied(f"change {sequence} was applied before (the last applied is {last})")
        applied, outcome = self._apply(change, sequence)
        for listener in self._applied:
            listener(applied, change)
        return outcome

    def _apply(self, change: Change, sequence: int | None) -> tuple[int, Outcome]:
        match change:
            case ListCreated():
                created = self.store.commit(change, sequence)
                self.indexes.created(created.result.uid)
                return created.sequence, created.result
            case ListUpdated():
                updated = self.store.commit(change, sequence)
                return updated.sequence, updated.result
            case ListDeleted():
                return self._delete_list(change, sequence)
            case EntriesAdded():
                return self._add_entries(change, sequence)
            case EntryRemoved():
                return self._remove_entry(change, sequence)
            case KeyCreated() | KeyRevoked():
                key = self.store.commit(change, sequence)
                for listener in self._keys_changed:
                    listener()
                return key.sequence, key.result
            case EntryConfirmed():
                with self.flood.lifting() as lift:
                    confirmed = self.store.commit(
                        change, sequence, also=lambda txn, done: lift(txn, (done.list.uid, done.entry.seq))
                    )
                return confirmed.sequence, confirmed.result.entry

    def _delete_list(self, change: ListDeleted, sequence: int | None) -> tuple[int, ListRecord]:
        with self.indexes.writing(self.store.get_list(change.name).uid):
            deleted = self.store.commit(change, sequence)
            self.indexes.dropped(deleted.result.uid)
        self.flood.forget(deleted.result.uid)
        return deleted.sequence, deleted.result

    def _add_entries(self, change: EntriesAdded, sequence: int | None) -> tuple[int, list[AddOutcome | Exception]]:
        """Under the list's write lock, so the index never runs ahead of the store (and a snapshot's
        checkpoint names a prefix of the change log)."""
        uid = self.store.get_list(change.list).uid
        with self.indexes.writing(uid) as index:
            if index is None:  # deleted (and perhaps made again) since it was looked up
                raise NotFound(f"list {change.list!r} does not exist", "LIST_NOT_FOUND")
            committed = self.store.commit(change, sequence)
            added = [result for result in committed.result if isinstance(result, AddOutcome) and not result.duplicate]
            if added:
                entries: list[tuple[EntryRecord, np.ndarray | None]] = [(a.entry, a.embedding) for a in added]
                self.indexes.apply_adds(index, entries, max(a.change for a in added))
        self.indexes.rebuild_if_outgrown(uid)
        return committed.sequence, committed.result

    def _remove_entry(self, change: EntryRemoved, sequence: int | None) -> tuple[int, EntryRecord]:
        uid = self.store.get_list(change.list).uid
        with self.indexes.writing(uid) as index:
            if index is None:
                raise NotFound(f"list {change.list!r} does not exist", "LIST_NOT_FOUND")
            removed = self.store.commit(change, sequence)
            index.remove(np.array([removed.result.entry.seq], dtype=np.int64), removed.result.change)
        self.flood.forget(uid, [removed.result.entry.seq])
        return removed.sequence, removed.result.entry

"""server.indexes.IndexRegistry over a real LMDB store: layouts follow list size, rebuilds
lose no change, snapshots restore the layout they saved.

Lists here grow just past the exact-search limit (about 20 000 synthetic entries), so the
IVF layouts under test are the ones a server builds, not scaled-down imitations.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.index import list_index
from lookalike.index.list_index import EXACT_VECTORS_MAX, PDQ_SCAN_BUDGET, VECTOR_SCAN_BUDGET, Layout, ListIndex
from lookalike.server.changes import EntriesAdded, EntryRemoved, ListCreated
from lookalike.server.flood import FloodGuard, FloodSettings
from lookalike.server.indexes import IndexRegistry, index_thread
from lookalike.server.records import NewEntry, encode_embedding
from lookalike.server.storage.schema import DB_SNAPSHOT_PIECES
from lookalike.server.storage.store import Store
from lookalike.server.writes import WritePath

GROWN = EXACT_VECTORS_MAX + 1_000
LIST = "big"
MODEL = "sscd-distilled"


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    matrix = rng.standard_normal((n, 512)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def synthetic(start: int, vectors: np.ndarray, codes: np.ndarray) -> EntriesAdded:
    entries = tuple(
        NewEntry(
            id=f"e{start + i}",
            sha256=hashlib.sha256(str(start + i).encode()).digest(),
            pdq=codes[i].tobytes(),
            pdq_quality=100,
            phash=bytes(8),
            embedding=encode_embedding(vectors[i]),
        )
        for i in range(len(vectors))
    )
    return EntriesAdded(time=time.time(), list=LIST, model=MODEL, entries=entries)


class Fixture:
    """A store with one list, a registry over it, and the vectors and codes of every entry added."""

    def __init__(
        self, path: Path, background: bool, budgets: tuple[int, int] = (VECTOR_SCAN_BUDGET, PDQ_SCAN_BUDGET)
    ) -> None:
        self.path = path
        self.store = Store(path, 1 << 32)
        self.registry = IndexRegistry(self.store, background, budgets)
        new_list = ListCreated(
            time=time.time(), name=LIST, description="", review_threshold=0.5, reject_threshold=0.8, model=MODEL
        )
        self.uid = self.writes.apply(new_list).uid
        self.rng = np.random.default_rng(0)
        self.vectors: dict[str, np.ndarray] = {}
        self.codes: dict[str, np.ndarray] = {}

    @property
    def writes(self) -> WritePath:
        """The write path over the store and registry as they are now (a test may reopen them)."""
        return WritePath(self.store, self.registry, FloodGuard(self.store, FloodSettings()))

    def add(self, count: int) -> None:
        """Add as the service does (through the write path: store commit, then index, under the list's lock)."""
        start = len(self.vectors)
        vectors = unit_vectors(self.rng, count)
        codes = self.rng.integers(0, 256, (count, 32), dtype=np.uint8)
        for offset in range(0, count, 5_000):
            batch = synthetic(start + offset, vectors[offset : offset + 5_000], codes[offset : offset + 5_000])
            self.writes.apply(batch)
        for i in range(count):
            self.vectors[f"e{start + i}"], self.codes[f"e{start + i}"] = vectors[i], codes[i]

    def remove(self, entry_id: str) -> None:
        self.writes.apply(EntryRemoved(time=time.time(), list=LIST, entry_id=entry_id))
        del self.vectors[entry_id], self.codes[entry_id]

    def found(self, entry_id: str, vector: np.ndarray) -> bool:
        index = self.registry.get(self.uid)
        assert index is not None
        seq = self.store.get_entry(LIST, entry_id).seq
        return seq in {hit.id for hit in index.search_vectors(vector, 10)}


@pytest.fixture
def grown(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path, background=False)
    fixture.add(GROWN)
    yield fixture
    fixture.store.close()


def near(rng: np.random.Generator, vector: np.ndarray, cosine: float) -> np.ndarray:
    noise = rng.standard_normal(len(vector)).astype(np.float32)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return (cosine * vector + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def test_a_list_that_grows_past_the_exact_limit_is_rebuilt_as_ivf_and_finds_near_copies(grown: Fixture) -> None:
    index = grown.registry.get(grown.uid)
    assert index is not None and index.layout.vector_cells
    assert index.layout == Layout.for_size(GROWN, GROWN)
    assert index.vector_count == index.pdq_count == grown.store.get_list(LIST).entry_count == GROWN
    rng = np.random.default_rng(1)
    sample = rng.choice(sorted(grown.vectors), 50, replace=False)
    assert all(grown.found(entry_id, near(rng, grown.vectors[entry_id], 0.8)) for entry_id in sample)
    for entry_id in sample[:10]:
        hits = index.search_pdq([grown.codes[entry_id].tobytes()], 0)
        assert [hit.id for hit in hits] == [grown.store.get_entry(LIST, entry_id).seq]


def test_changes_made_while_an_index_is_rebuilt_are_in_the_index_that_takes_over(tmp_path: Path) -> None:
    fixture = Fixture(tmp_path, background=False)
    try:
        fixture.add(GROWN)
        fresh = fixture.registry.build(fixture.uid)  # a rebuild's read of the store ...
        fixture.add(500)  # ... then changes the old index serves meanwhile
        removed_code = fixture.codes["e3"]
        fixture.remove("e3")
        fixture.remove(f"e{GROWN + 200}")  # added and removed after the read
        assert fixture.registry.install(fixture.uid, fresh)
        index = fixture.registry.get(fixture.uid)
        assert index is fresh and index.layout.vector_cells
        assert index.vector_count == index.pdq_count == len(fixture.vectors) == GROWN + 498
        newest = f"e{GROWN + 499}"
        assert fixture.found(newest, fixture.vectors[newest])
        assert index.search_pdq([fixture.codes["e4"].tobytes()], 0)[0].id == fixture.store.get_entry(LIST, "e4").seq
        assert index.search_pdq([removed_code.tobytes()], 0) == []
    finally:
        fixture.store.close()


def test_a_list_growing_past_the_exact_limit_is_rebuilt_on_a_thread(tmp_path: Path) -> None:
    fixture = Fixture(tmp_path, background=True)
    try:
        fixture.add(EXACT_VECTORS_MAX)
        assert not fixture.registry.get(fixture.uid).layout.vector_cells  # type: ignore[union-attr]
        fixture.add(1_000)  # crosses the limit
        fixture.registry.wait_for_rebuilds()
        index = fixture.registry.get(fixture.uid)
        assert index is not None and index.layout.vector_cells
        assert index.vector_count == EXACT_VECTORS_MAX + 1_000
    finally:
        fixture.store.close()


def test_a_restart_loads_the_saved_layout_and_replays_later_changes_without_rebuilding(grown: Fixture) -> None:
    assert grown.registry.snapshot_all() == 1
    grown.add(200)
    grown.remove("e7")
    layout = grown.registry.get(grown.uid).layout  # type: ignore[union-attr]
    grown.store.close()

    grown.store = Store(grown.path, 1 << 32)
    grown.registry = IndexRegistry(grown.store, background=False)
    grown.registry.load_all()
    index = grown.registry.get(grown.uid)
    assert index is not None and index.layout == layout, "loaded from the snapshot, not rebuilt"
    assert index.vector_count == index.pdq_count == GROWN + 199
    newest = f"e{GROWN + 199}"
    assert grown.found(newest, grown.vectors[newest])


def test_a_snapshot_missing_a_re_rank_piece_is_rebuilt_from_the_entries_at_start_up(grown: Fixture) -> None:
    assert grown.registry.snapshot_all() == 1
    pieces = grown.store.environment.db(DB_SNAPSHOT_PIECES)
    with grown.store.env.begin(write=True) as txn:
        cursor = txn.cursor(db=pieces)
        assert cursor.first() and cursor.delete()
    grown.store.close()

    grown.store = Store(grown.path, 1 << 32)
    grown.registry = IndexRegistry(grown.store, background=False)
    grown.registry.load_all()
    index = grown.registry.get(grown.uid)
    assert index is not None and index.vector_count == index.pdq_count == GROWN
    assert grown.found("e0", grown.vectors["e0"]), "the first piece's entries are searchable again"


def test_periodic_snapshots_wait_for_a_share_of_the_list_to_change(grown: Fixture) -> None:
    grown.registry.snapshot_all()
    grown.add(100)  # under 1 % of the list
    assert grown.registry.snapshot_all(min_changes=10, share=0.01) == 0
    grown.add(200)
    assert grown.registry.snapshot_all(min_changes=10, share=0.01) == 1


def budgets(index: ListIndex | None) -> tuple[int, int]:
    assert index is not None
    return index.vector_scan_budget, index.pdq_scan_budget


def test_the_registry_s_scan_budgets_hold_for_created_rebuilt_and_reloaded_indexes(tmp_path: Path) -> None:
    fixture = Fixture(tmp_path, background=False, budgets=(30_000, 7_000))
    try:
        assert budgets(fixture.registry.get(fixture.uid)) == (30_000, 7_000)
        fixture.add(EXACT_VECTORS_MAX + 1_000)  # rebuilt as an inverted file
        rebuilt = fixture.registry.get(fixture.uid)
        assert rebuilt is not None and rebuilt.layout.vector_cells and budgets(rebuilt) == (30_000, 7_000)
        fixture.registry.snapshot_all()
        reloaded = IndexRegistry(fixture.store, False, (60_000, 9_000))
        reloaded.load_all()
        assert budgets(reloaded.get(fixture.uid)) == (60_000, 9_000)
    finally:
        fixture.store.close()


def test_a_list_past_the_exact_pdq_limit_gets_hash_tables_when_rebuilt_and_on_a_thread_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(list_index, "EXACT_PDQ_MAX", 5_000)  # a binary IVF for thousands of codes, not 200 000
    fixture = Fixture(tmp_path, background=False)
    try:
        fixture.add(6_000)  # rebuilt with a binary IVF, its tables built before it takes over
        index = fixture.registry.get(fixture.uid)
        assert index is not None and index.layout.pdq_cells and index.has_pdq_tables
        assert fixture.registry.snapshot_all() == 1
        fixture.add(100)
        removed_code = fixture.codes["e7"]
        fixture.remove("e7")
        fixture.store.close()

        fixture.store = Store(tmp_path, 1 << 32)
        registry = IndexRegistry(fixture.store, background=True)
        registry.load_all()
        registry.wait_for_rebuilds()
        index = registry.get(fixture.uid)
        assert index is not None and index.layout.pdq_cells and index.has_pdq_tables
        for entry_id in ("e3", "e6050"):
            code = fixture.codes[entry_id]
            hits = index.search_pdq([code.tobytes()], 0)
            assert [hit.id for hit in hits] == [fixture.store.get_entry(LIST, entry_id).seq]
        assert index.search_pdq([removed_code.tobytes()], 0) == []
    finally:
        fixture.store.close()


def test_index_builds_and_rebuilds_run_faiss_on_one_openmp_thread() -> None:
    """A rebuild replays the changes since its read under the list's write lock: with OpenMP's default
    team each add cost about 30 times the CPU on a busy box and held up every write to the list."""
    seen: list[int] = []
    worker = index_thread(lambda: seen.append(faiss.omp_get_max_threads()), "test-index-thread")
    worker.start()
    worker.join()
    assert seen == [1]

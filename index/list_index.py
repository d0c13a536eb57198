"""One disallow list's in-memory indexes: PDQ codes (Hamming) and embeddings (inner product).

Both are keyed by the list's int64 entry sequence numbers, so a match from either
side names the same entry. The index is a cache of what the store holds: it is
serialised with a checkpoint (the last change it reflects) so a restart loads it
and replays only newer changes, never recomputing an embedding.

Small lists are searched exactly. Large ones use inverted files (IVF): PDQ codes
in a binary IVF, embeddings as 4-bit product-quantised fast-scan codes (16 bytes
each; on lists too large to scan whole, filed in each vector's two nearest cells),
probing enough cells to scan a fixed budget of codes per query. A large list's PDQ
codes are also filed in sampled-bit hash tables (`index.pdq_tables`), built after a
load or rebuild; once built they answer PDQ searches, finding near codes the binary
IVF misses, and the binary IVF remains what is stored. The
embedding side's shortlist is then re-ranked from 8-bit codes of every vector kept
in memory (`index.rerank`), so similarities come back within about 0.005 of exact
without reading the stored float vectors.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from lookalike.index.pdq_tables import SampledBitTables
from lookalike.index.rerank import RerankCodes

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
EMBEDDING_DIM = 512

_MAGIC = b"LKIX"
_FORMAT_VERSION = 4
# magic, version, checkpoint change, vector cells, cells per vector, pdq cells, trained-for count,
# then the lengths of: pdq blob, vector blob, re-rank parameters, re-rank piece table
_HEADER = struct.Struct(">4sHQIHIQQQII")
_HEADER_V3 = struct.Struct(">4sHQIIQQQII")
"""Version 3, before spilling, had no cells per vector (one each); its body is the same, and is
still read, so an upgrade does not rebuild every large list."""

EXACT_VECTORS_MAX = 20_000
"""Largest embedding count searched exactly: 20k × 512 floats scan in about 2.5 ms."""
HALF_SCAN_FROM = 4_096
"""Exact lists from this many embeddings are scanned first in half precision (`_search_exact`): half
the bytes read, and the float vectors only for a shortlist. One view on one core of a quiet box: 1.23
against 1.84 ms at 20 000 entries, even at 4 096 (0.32 against 0.33 ms), dearer below (0.12 against
0.05 ms at 1 024)."""
HALF_SHORTLIST = 128
"""Entries per view (at least twice k) the half-precision scan shortlists for the float scan to visit."""
HALF_ERROR = 2.0**-9
"""Bound on a half-precision similarity's error, relative to the two vectors' norms: half precision
keeps 11 significant bits (2^-11 per component), with room for float sums on either side."""
EXACT_PDQ_MAX = 200_000
"""Largest PDQ count searched exactly: 8 query variants over 200k codes take about 3 ms."""
VECTOR_SCAN_BUDGET = 3_200_000
"""Fast-scan codes compared per query view on a large list. At 10M entries (20M codes, a sixth of
the cells probed) 7.8 ms on one core, recall 0.990 of random neighbours from cosine 0.5; 2.4M
codes gave 6.2 ms and 0.981 (docs/tuning.md, "Index layouts for large lists")."""
PDQ_SCAN_BUDGET = 200_000
"""PDQ codes compared per query variant on a large list's binary IVF, which answers until the list's
hash tables are built. At 10M random codes: 0.7 ms for a picture's own code, 4.9 ms for eight
variants, recall 0.935 at 16-31 bits; twice the budget gave 0.979 in twice the time, the scan being
bound by memory bandwidth (docs/tuning.md, "Index layouts for large lists")."""
MAX_CELLS = 4096
"""Cap on IVF cells: k-means training time grows with cells × training points."""
ENTRIES_PER_CELL = 1000
"""Embeddings per fast-scan cell, until the cap. A query pays about half a microsecond for each cell
it visits, whatever its size: 100 000 entries scanned whole for two views cost 1.25 ms in 1024
cells and 0.36 ms in 128. Lists larger than the budget reach the cap either way."""
SHORTLIST_MIN = 128
"""Candidates fetched per view (per copy of an entry) from an inverted file before re-ranking."""
PQ_SUBQUANTIZERS = 32
TRAINING_POINTS_PER_CELL = 40
TOMBSTONES_MIN = 1000
"""Removals from a fast-scan side are purged once this many (or 0.5 % of it) are pending."""
ID_BYTES = 8
ID_LOOKUP_BYTES = 32
"""About what a hash-map entry from id to position costs (exact sides' id maps, binary IVF's direct map)."""
REBUILD_GROWTH = 4
"""An IVF layout is rebuilt once its list is this many times larger (or smaller) than it was trained for."""
SPILLED_CELLS = 2
"""Cells an embedding is filed in on a large list's inverted file ("spilling"). Random unit vectors
at 1M, 4096 cells, the same number of codes compared: a neighbour at cosine 0.5-0.6 lies in a probed
cell 0.97 of the time from two cells against 0.935 from one (docs/tuning.md, "Index layouts for large lists")."""
SPILL_FROM = VECTOR_SCAN_BUDGET // SPILLED_CELLS
"""Lists larger than this are spilled. Smaller ones are scanned whole at the default budget, and
grown fourfold (when a rebuild spills them) still have half their cells probed: a second copy
there would only double the codes compared."""


def configure_threads(threads: int = 1) -> None:
    """FAISS's OpenMP threads fight request threads on small machines: use one."""
    faiss.omp_set_num_threads(threads)


def _cells_for(count: int) -> int:
    """About 4·√n cells, a power of two, capped (the binary PDQ side)."""
    return int(min(MAX_CELLS, max(64, 2 ** round(math.log2(4 * math.sqrt(max(count, 1)))))))


def _vector_cells_for(count: int) -> int:
    """About one cell per ENTRIES_PER_CELL embeddings, a power of two, capped."""
    return int(min(MAX_CELLS, max(64, 2 ** round(math.log2(max(count, 1) / ENTRIES_PER_CELL)))))


def _probes(cells: int, count: int, budget: int) -> int:
    """Cells to visit so that about `budget` of `count` codes are compared."""
    if count <= 0:
        return 1
    return int(min(cells, max(8, math.ceil(cells * budget / count))))


@dataclass(frozen=True)
class Layout:
    """How a list is indexed: 0 cells means exact search on that side; `cells_per_vector` is
    how many of its nearest cells each embedding is filed in."""

    vector_cells: int = 0
    pdq_cells: int = 0
    trained_for: int = 0
    cells_per_vector: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.cells_per_vector <= max(self.vector_cells, 1):
            raise ValueError(f"cannot file each embedding in {self.cells_per_vector} of {self.vector_cells} cells")

    @classmethod
    def for_size(cls, vectors: int, codes: int) -> Layout:
        return cls(
            vector_cells=_vector_cells_for(vectors) if vectors > EXACT_VECTORS_MAX else 0,
            pdq_cells=_cells_for(codes) if codes > EXACT_PDQ_MAX else 0,
            trained_for=max(vectors, codes),
            cells_per_vector=SPILLED_CELLS if vectors > SPILL_FROM else 1,
        )

    @property
    def training_points(self) -> int:
        """Entries worth sampling to train this layout's IVF sides (0 when exact)."""
        return max(self.vector_cells, self.pdq_cells) * TRAINING_POINTS_PER_CELL

    def outgrown(self, vectors: int, codes: int) -> bool:
        """True when a list of this size deserves another layout (it grew past exact, or far from its training)."""
        ideal = Layout.for_size(vectors, codes)
        if (ideal.vector_cells == 0) != (self.vector_cells == 0) or (ideal.pdq_cells == 0) != (self.pdq_cells == 0):
            return True
        size = max(vectors, codes)
        trained = max(self.trained_for, 1)
        approximate = self.vector_cells or self.pdq_cells
        return bool(approximate) and not trained / REBUILD_GROWTH <= size <= trained * REBUILD_GROWTH


@dataclass(frozen=True)
class IndexCheckpoint:
    """The last store change an index reflects, and how many entries it holds."""

    change: int
    pdq_count: int
    vector_count: int


@dataclass(frozen=True)
class Snapshot:
    """An index's bytes at one checkpoint: `blob` holds the FAISS indexes and names every re-rank
    piece; `pieces` holds only those changed since the last snapshot marked saved (`ListIndex.saved`)."""

    checkpoint: IndexCheckpoint
    blob: bytes
    pieces: dict[int, bytes] = field(default_factory=dict)
    piece_numbers: frozenset[int] = frozenset()
    piece_versions: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HashHit:
    id: int
    distance: int


@dataclass(frozen=True)
class VectorHit:
    id: int
    similarity: float
    view: int = 0
    """The row of the searched vectors (one picture's views) that came closest."""


class _ReadWriteLock:
    """Many concurrent searches, or one writer: FAISS searches are safe together, not beside an add."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing and not self._readers)
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


def _empty_pdq(cells: int) -> faiss.IndexBinary:
    if not cells:
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(PDQ_BITS))
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(PDQ_BITS), PDQ_BITS, cells)
    index.cp.niter = 10
    return index


def _empty_vectors(cells: int, dim: int) -> faiss.Index:
    if not cells:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    index = faiss.index_factory(dim, f"IVF{cells},PQ{PQ_SUBQUANTIZERS}x4fs", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    # Codes of the vectors themselves, not of their offsets from a cell's centre: as cheap to scan, and
    # on random unit vectors at 1M, neighbours at cosine 0.5-0.6 reached the 128-shortlist from a quarter
    # of the cells 0.94 of the time instead of 0.76 (equal on clustered vectors; docs/tuning.md).
    ivf.by_residual = False
    return index


def _empty_half(dim: int) -> faiss.Index:
    """The half-precision copy of an exact list's embeddings, under the same ids."""
    return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))


def _search_exact(
    flat: faiss.Index, half: faiss.Index, max_norm: float, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """What `flat.search(queries, k)` returns, to the bit, reading half the memory on large lists.

    The half-precision copy shortlists each view's nearest entries; the float scan then visits only
    the shortlisted ones, with the same kernel, so similarities and order are those of a full scan.
    A half-precision similarity lies within HALF_ERROR × both norms of the float one, so an entry left out cannot
    reach the top k when the shortlist's last similarity lies more than twice that below its k-th.
    When it does not (a crowd of near-equal entries), the float scan reads the whole list after all."""
    wanted = max(HALF_SHORTLIST, 2 * k)
    if 4 * wanted < int(flat.ntotal):  # else a shortlist saves little
        margins = HALF_ERROR * max_norm * np.linalg.norm(queries, axis=1)
        coarse, labels = half.search(queries, wanted)
        if np.all(coarse[:, -1] < coarse[:, k - 1] - 2 * margins):
            chosen = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.unique(labels)))  # type: ignore[call-arg]
            return flat.search(queries, k, params=chosen)
    return flat.search(queries, k)


def _file_in_nearest_cells(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray, copies: int) -> None:
    """Add each vector to its `copies` (2 or more) nearest cells of a fast-scan inverted file.

    FAISS files a vector in the one cell its quantizer assigns, and its pre-assigned add
    writes codes unpacked into fast-scan's blocked lists. So each cell's share is added
    through FAISS's own add, its quantizer swapped for one that names that cell."""
    ivf = faiss.extract_index_ivf(index)
    _, cells = ivf.quantizer.search(vectors, copies)
    cells, rows = cells.ravel(), np.repeat(np.arange(len(vectors)), copies)
    order = np.argsort(cells, kind="stable")
    cells, rows = cells[order], rows[order]
    starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
    naming = faiss.IndexIDMap(faiss.IndexFlatIP(ivf.d))
    naming.add_with_ids(np.zeros((1, ivf.d), np.float32), np.zeros(1, np.int64))
    quantizer = ivf.quantizer
    ivf.quantizer = naming
    try:
        for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(cells)], strict=True):
            faiss.copy_array_to_vector(cells[start : start + 1], naming.id_map)
            chosen = rows[start:end]
            ivf.add_with_ids(vectors[chosen], ids[chosen])
    finally:
        ivf.quantizer = quantizer


def _binary_ivf_contents(index: faiss.IndexBinaryIVF) -> tuple[np.ndarray, np.ndarray]:
    """Every (id, code) a binary inverted file holds, read list by list."""
    ids, codes = [np.zeros(0, np.int64)], [np.zeros((0, PDQ_BYTES), np.uint8)]
    lists = index.invlists
    for cell in range(index.nlist):
        size = lists.list_size(cell)
        if size:
            ids.append(faiss.rev_swig_ptr(lists.get_ids(cell), size).copy())
            codes.append(faiss.rev_swig_ptr(lists.get_codes(cell), size * PDQ_BYTES).copy().reshape(size, PDQ_BYTES))
    return np.concatenate(ids), np.concatenate(codes)


def _training_sample(data: np.ndarray, cells: int, seed: int = 0) -> np.ndarray:
    wanted = cells * TRAINING_POINTS_PER_CELL
    if len(data) <= wanted:
        return data
    rows = np.sort(np.random.default_rng(seed).choice(len(data), wanted, replace=False))
    return data[rows]


class ListIndex:
    """PDQ and embedding indexes of one list; safe to share across threads."""

    def __init__(self, dim: int = EMBEDDING_DIM, layout: Layout | None = None) -> None:
        self.dim = dim
        self.layout = layout or Layout()
        if self.layout.vector_cells or self.layout.pdq_cells:
            raise ValueError("an IVF layout needs training data: use ListIndex.build")
        self._pdq: faiss.IndexBinary = _empty_pdq(0)
        self._vectors: faiss.Index = _empty_vectors(0, dim)
        self._half: faiss.Index | None = _empty_half(dim)
        """An exact side's embeddings in half precision (None on an inverted file), for `_search_exact`."""
        self._max_norm = 0.0
        """No stored embedding's norm exceeds this (unit vectors: 1), for the half-precision error bound."""
        self._lock = _ReadWriteLock()
        self._writer = threading.Lock()
        """Orders changes with the PDQ tables' builds and merges, which run beside searches, not under `_lock`."""
        self._pdq_tables: SampledBitTables | None = None
        self._pdq_tables_pending: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        """While the tables are built: changes made meanwhile, (ids, codes) for adds, (ids, None) for removals."""
        self.vector_scan_budget = VECTOR_SCAN_BUDGET
        self.pdq_scan_budget = PDQ_SCAN_BUDGET
        self._tombstones: set[int] = set()
        self._rerank: RerankCodes | None = None
        self.change = 0

    @classmethod
    def trained(
        cls,
        layout: Layout,
        pdq_sample: np.ndarray | None,
        vector_sample: np.ndarray | None,
        dim: int = EMBEDDING_DIM,
    ) -> ListIndex:
        """An empty index in `layout`, its IVF sides trained on samples of the entries to come
        (add them next, in chunks: a list of millions never needs to fit in memory twice)."""
        index = cls(dim)
        index.layout = layout
        if layout.pdq_cells:
            if pdq_sample is None or len(pdq_sample) == 0:
                raise ValueError("a binary IVF layout needs PDQ codes to train on")
            codes = np.ascontiguousarray(pdq_sample, dtype=np.uint8).reshape(-1, PDQ_BYTES)
            index._pdq = _empty_pdq(layout.pdq_cells)
            index._pdq.train(_training_sample(codes, layout.pdq_cells))
            index._pdq.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # O(1) removals
        if layout.vector_cells:
            if vector_sample is None or len(vector_sample) == 0:
                raise ValueError("an IVF layout needs embeddings to train on")
            matrix = np.ascontiguousarray(vector_sample, dtype=np.float32).reshape(-1, dim)
            sample = _training_sample(matrix, layout.vector_cells)
            index._vectors = _empty_vectors(layout.vector_cells, dim)
            index._half = None
            index._vectors.train(sample)
            index._rerank = RerankCodes.trained(sample)
        return index

    @classmethod
    def build(
        cls, ids: np.ndarray, pdq_codes: np.ndarray | None, vectors: np.ndarray | None, change: int, layout: Layout
    ) -> ListIndex:
        """An index of these entries (each with both signals) in `layout`, trained on them."""
        index = cls.trained(layout, pdq_codes, vectors)
        index.add(ids, pdq_codes, vectors, change)
        return index

    @property
    def pdq_count(self) -> int:
        return int(self._pdq.ntotal)

    @property
    def vector_count(self) -> int:
        return int(self._vectors.ntotal) // self.layout.cells_per_vector - len(self._tombstones)

    def outgrown(self) -> bool:
        return self.layout.outgrown(self.vector_count, self.pdq_count)

    def memory_bytes(self) -> int:
        """Estimated bytes held (FAISS reports no figure): codes (each copy) or vectors, ids and the maps
        that find an id again, trained centroids, and re-rank codes."""
        lookup = ID_BYTES + ID_LOOKUP_BYTES
        pdq_per_entry = PDQ_BYTES + lookup
        vector_per_code = PQ_SUBQUANTIZERS // 2 + ID_BYTES if self.layout.vector_cells else 6 * self.dim + 2 * lookup
        centroids = self.layout.vector_cells * self.dim * 4 + self.layout.pdq_cells * PDQ_BYTES
        rerank = self._rerank.memory_bytes() if self._rerank else 0
        tables = self._pdq_tables.memory_bytes() if self._pdq_tables else 0
        codes = int(self._pdq.ntotal) * pdq_per_entry + int(self._vectors.ntotal) * vector_per_code
        return codes + centroids + rerank + tables

    def add(self, ids: np.ndarray, pdq_codes: np.ndarray | None, vectors: np.ndarray | None, change: int) -> None:
        """Add entries (either signal may be absent) and record the change they came from."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._writer:
            self._add(ids, pdq_codes, vectors, change)
            self._merge_pdq_tail()

    def _add(self, ids: np.ndarray, pdq_codes: np.ndarray | None, vectors: np.ndarray | None, change: int) -> None:
        with self._lock.writing():
            if pdq_codes is not None and len(ids):
                codes = np.ascontiguousarray(pdq_codes, dtype=np.uint8).reshape(len(ids), PDQ_BYTES)
                self._pdq.add_with_ids(codes, ids)
                if self._pdq_tables is not None:
                    self._pdq_tables.add(ids, codes)
                if self._pdq_tables_pending is not None:
                    self._pdq_tables_pending.append((ids.copy(), codes.copy()))
            if vectors is not None and len(ids):
                matrix = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
                if self.layout.cells_per_vector > 1:
                    _file_in_nearest_cells(self._vectors, ids, matrix, self.layout.cells_per_vector)
                else:  # FAISS files each vector in its one nearest cell itself
                    self._vectors.add_with_ids(matrix, ids)
                if self._half is not None:
                    self._half.add_with_ids(matrix, ids)
                    self._max_norm = max(self._max_norm, float(np.linalg.norm(matrix, axis=1).max()))
                if self._rerank is not None:
                    self._rerank.add(ids, matrix)
            self._set_probes()
            self.change = max(self.change, change)

    def _merge_pdq_tail(self) -> None:
        """File the PDQ tables' tail in once it is long; searches go on over the old tables meanwhile
        (the caller holds `_writer`, so nothing else changes them)."""
        if self._pdq_tables is not None and self._pdq_tables.tail_is_long():
            merged = self._pdq_tables.merged()
            with self._lock.writing():
                self._pdq_tables.install(merged)

    def index_pdq_codes(self) -> bool:
        """Build the PDQ hash tables of a large list (about 30 s at 10M codes, beside searches and
        changes); PDQ searches use them from then on. False when the list is searched exactly, or
        has them (or is building them) already."""
        with self._writer:
            if not self.layout.pdq_cells or self._pdq_tables is not None or self._pdq_tables_pending is not None:
                return False
            with self._lock.reading():
                assert isinstance(self._pdq, faiss.IndexBinaryIVF)  # a layout with PDQ cells
                ids, codes = _binary_ivf_contents(self._pdq)
            self._pdq_tables_pending = []
        try:
            tables = SampledBitTables(ids, codes)
        except BaseException:
            with self._writer:
                self._pdq_tables_pending = None
            raise
        with self._writer:
            for changed_ids, changed_codes in self._pdq_tables_pending or ():
                if changed_codes is None:
                    tables.remove(changed_ids)
                else:
                    tables.add(changed_ids, changed_codes)
            self._pdq_tables_pending = None
            with self._lock.writing():
                self._pdq_tables = tables
            self._merge_pdq_tail()
        return True

    @property
    def has_pdq_tables(self) -> bool:
        return self._pdq_tables is not None

    def _set_probes(self) -> None:
        """Probe counts follow the list's size; set while writing, so searches never race a change."""
        if isinstance(self._pdq, faiss.IndexBinaryIVF):
            self._pdq.nprobe = _probes(self.layout.pdq_cells, self.pdq_count, self.pdq_scan_budget)
        if self.layout.vector_cells:
            faiss.extract_index_ivf(self._vectors).nprobe = _probes(
                self.layout.vector_cells, int(self._vectors.ntotal), self.vector_scan_budget
            )

    def set_scan_budgets(self, vectors: int, pdq_codes: int) -> None:
        """Codes compared per query view / PDQ variant on IVF sides: recall against time."""
        with self._lock.writing():
            self.vector_scan_budget, self.pdq_scan_budget = vectors, pdq_codes
            self._set_probes()

    def remove(self, ids: np.ndarray, change: int) -> None:
        """Remove entries by id; ids not present are ignored.

        Fast-scan IVF codes can only be removed by a scan of every inverted list, so
        there a removal is a tombstone, hidden from searches at once and purged in
        batches (and before every snapshot)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._writer, self._lock.writing():
            if self.layout.pdq_cells:  # binary IVF with a hashtable direct map: O(1) per id
                self._pdq.remove_ids(faiss.IDSelectorArray(ids))
            else:
                self._pdq.remove_ids(faiss.IDSelectorBatch(ids))
            if self._pdq_tables is not None:
                self._pdq_tables.remove(ids)
            if self._pdq_tables_pending is not None:
                self._pdq_tables_pending.append((ids.copy(), None))
            if self.layout.vector_cells:
                self._tombstones.update(ids.tolist())
                if len(self._tombstones) >= max(TOMBSTONES_MIN, self.vector_count // 200):
                    self._purge()
            else:
                self._vectors.remove_ids(faiss.IDSelectorBatch(ids))
                if self._half is not None:
                    self._half.remove_ids(faiss.IDSelectorBatch(ids))
            self._set_probes()
            self.change = max(self.change, change)

    def _purge(self) -> None:
        if self._tombstones:
            self._vectors.remove_ids(faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64)))
            self._tombstones.clear()

    def search_pdq(self, codes: Sequence[bytes], max_distance: int) -> list[HashHit]:
        """Entries within `max_distance` bits (inclusive) of any of `codes`, each at its
        smallest distance (codes are one picture's variants, e.g. its rotations)."""
        if not codes:
            return []
        query = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), PDQ_BYTES)
        with self._lock.reading():
            if self._pdq.ntotal == 0:
                return []
            if self._pdq_tables is not None:
                found = self._pdq_tables.search(query, max_distance)
                return [HashHit(label, distance) for label, distance in found.items()]
            # FAISS keeps distances strictly below the radius: ask for one more.
            _, distances, labels = self._pdq.range_search(query, max_distance + 1)
        nearest: dict[int, int] = {}
        for label, distance in zip(labels.tolist(), distances.astype(np.int64).tolist(), strict=True):
            if distance < nearest.get(label, PDQ_BITS + 1):
                nearest[label] = distance
        return [HashHit(label, distance) for label, distance in nearest.items()]

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[VectorHit]:
        """The k entries of highest inner product (cosine, for unit vectors) with any of
        `vectors` (one picture's views: whole, region), each at its best similarity.

        On an IVF layout a longer shortlist is re-ranked from the 8-bit codes: the
        similarities are then within about 0.005 of exact."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock.reading():
            if self.vector_count == 0 or k <= 0:
                return []
            if self._rerank is None:
                k = min(k, int(self._vectors.ntotal))
                if self._half is not None and self._vectors.ntotal >= HALF_SCAN_FROM:
                    similarities, labels = _search_exact(self._vectors, self._half, self._max_norm, queries, k)
                else:
                    similarities, labels = self._vectors.search(queries, k)
                best: dict[int, tuple[float, int]] = {}
                views = np.repeat(np.arange(len(queries)), labels.shape[1]).tolist()
                for label, similarity, view in zip(
                    labels.ravel().tolist(), similarities.ravel().tolist(), views, strict=True
                ):
                    if label >= 0 and similarity > best.get(label, (-2.0, 0))[0]:
                        best[label] = (similarity, view)
                ranked = sorted(best.items(), key=lambda item: -item[1][0])[:k]
                return [VectorHit(label, similarity, view) for label, (similarity, view) in ranked]
            # An entry's copies score alike and come back together: fetch enough for the distinct ones.
            wanted = max(4 * k, SHORTLIST_MIN) * self.layout.cells_per_vector
            _, labels = self._vectors.search(queries, min(wanted, int(self._vectors.ntotal)))
            candidates = np.unique(labels[labels >= 0])
            if self._tombstones:
                candidates = candidates[~np.isin(candidates, np.fromiter(self._tombstones, np.int64))]
            if not len(candidates):
                return []
            table = self._rerank.similarities(candidates, queries)
        nearest_view = table.argmax(axis=0)
        reranked = table[nearest_view, np.arange(len(candidates))]
        top = np.argsort(-reranked, kind="stable")[:k]
        return [VectorHit(int(candidates[i]), float(reranked[i]), int(nearest_view[i])) for i in top]

    def checkpoint(self) -> IndexCheckpoint:
        with self._lock.reading():
            return IndexCheckpoint(self.change, self.pdq_count, self.vector_count)

    def serialize(self) -> Snapshot:
        """Both indexes with their layout and checkpoint, and the re-rank pieces changed since
        the last snapshot marked saved, taken atomically."""
        with self._lock.writing():
            self._purge()
            pdq_blob = faiss.serialize_index_binary(self._pdq).tobytes()
            vector_blob = faiss.serialize_index(self._vectors).tobytes()
            checkpoint = IndexCheckpoint(self.change, self.pdq_count, self.vector_count)
            state = self._rerank.piece_state() if self._rerank else None
        params = self._rerank.params() if self._rerank else b""
        table = RerankCodes.pack_rows(state.rows) if state else b""
        layout = self.layout
        header = _HEADER.pack(
            _MAGIC,
            _FORMAT_VERSION,
            checkpoint.change,
            layout.vector_cells,
            layout.cells_per_vector,
            layout.pdq_cells,
            layout.trained_for,
            len(pdq_blob),
            len(vector_blob),
            len(params),
            len(table),
        )
        blob = header + pdq_blob + vector_blob + params + table
        if state is None:
            return Snapshot(checkpoint, blob)
        return Snapshot(checkpoint, blob, state.changed, frozenset(state.rows), state.versions)

    def saved(self, snapshot: Snapshot) -> None:
        """The snapshot is stored: its pieces need no rewrite until they change again."""
        if self._rerank is not None:
            with self._lock.writing():
                self._rerank.saved(snapshot.piece_versions)

    @classmethod
    def deserialize(
        cls, data: bytes, pieces: Iterable[tuple[int, bytes | memoryview]] = (), dim: int = EMBEDDING_DIM
    ) -> ListIndex:
        """Rebuild an index from a snapshot's blob and its stored re-rank pieces; raises
        ValueError when unreadable."""
        if len(data) < _HEADER.size:
            raise ValueError("index snapshot is truncated")
        magic, version = _HEADER.unpack_from(data)[:2]
        if magic != _MAGIC or version not in (3, _FORMAT_VERSION):
            raise ValueError(f"index snapshot has format {magic!r} v{version}; expected {_MAGIC!r} v{_FORMAT_VERSION}")
        if version == 3:
            header = _HEADER_V3
            _, _, change, vector_cells, pdq_cells, trained_for, *lengths = header.unpack_from(data)
            cells_per_vector = 1
        else:
            header = _HEADER
            _, _, change, vector_cells, cells_per_vector, pdq_cells, trained_for, *lengths = header.unpack_from(data)
        if len(data) != header.size + sum(lengths):
            raise ValueError("index snapshot length does not match its header")
        pdq_len, vector_len, params_len, table_len = lengths
        start = header.size
        pdq_blob = np.frombuffer(data, dtype=np.uint8, count=pdq_len, offset=start)
        vector_blob = np.frombuffer(data, dtype=np.uint8, count=vector_len, offset=start + pdq_len)
        index = cls(dim)
        index.layout = Layout(vector_cells, pdq_cells, trained_for, cells_per_vector)  # ValueError if absurd
        try:
            index._pdq = faiss.deserialize_index_binary(pdq_blob)
            index._vectors = faiss.deserialize_index(vector_blob)
        except RuntimeError as error:  # FAISS reports a corrupt blob as RuntimeError
            raise ValueError(f"index snapshot is corrupt: {error}") from None
        if index._pdq.d != PDQ_BITS or index._vectors.d != dim:
            raise ValueError(f"index snapshot holds {index._pdq.d}-bit codes and {index._vectors.d}-d vectors")
        if params_len:
            params_start = start + pdq_len + vector_len
            index._rerank = RerankCodes.from_params(data[params_start : params_start + params_len], dim)
            index._rerank.load(data[params_start + params_len :], pieces)
        elif vector_cells:
            raise ValueError("index snapshot of an inverted file holds no re-rank codes")
        if vector_cells:
            index._half = None
        elif index._vectors.ntotal:  # the half-precision copy is not stored: made from the float vectors
            assert isinstance(index._vectors, faiss.IndexIDMap2)
            matrix = index._vectors.index.reconstruct_n(0, index._vectors.ntotal)
            index._half = _empty_half(dim)
            index._half.add_with_ids(matrix, faiss.vector_to_array(index._vectors.id_map))
            index._max_norm = float(np.linalg.norm(matrix, axis=1).max())
        index.change = int(change)
        index._set_probes()
        return index

"""index.list_index.ListIndex against a numpy brute-force oracle.

Every search is checked against the obvious O(n) computation on the same seeded
data: Hamming distances over unpacked bits for PDQ, a matrix product for the
embeddings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import faiss
import numpy as np
import pytest

from lookalike.index import list_index
from lookalike.index.list_index import (
    _HEADER,
    _HEADER_V3,
    EMBEDDING_DIM,
    EXACT_PDQ_MAX,
    EXACT_VECTORS_MAX,
    HALF_SCAN_FROM,
    MAX_CELLS,
    PDQ_BITS,
    PDQ_BYTES,
    REBUILD_GROWTH,
    SPILL_FROM,
    SPILLED_CELLS,
    HashHit,
    IndexCheckpoint,
    Layout,
    ListIndex,
    _empty_half,
    _search_exact,
    configure_threads,
)
from lookalike.index.pdq_tables import SampledBitTables
from lookalike.index.rerank import PIECE_ROWS

N_ENTRIES = 400
N_QUERIES = 12
RADII = (0, 10, 31, 63)
TOP_K = 10


# Oracle ------------------------------------------------------------------------


def hamming(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Bit distances from one packed query to each packed code, in numpy only."""
    return np.unpackbits(np.bitwise_xor(codes, query[None, :]), axis=1).sum(axis=1).astype(np.int64)


def oracle_pdq(ids: np.ndarray, codes: np.ndarray, query: np.ndarray, max_distance: int) -> dict[int, int]:
    distances = hamming(codes, query)
    return {int(i): int(d) for i, d in zip(ids, distances, strict=True) if d <= max_distance}


def oracle_top_k(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    similarities = vectors @ query
    order = np.argsort(-similarities, kind="stable")[:k]
    return [int(ids[i]) for i in order], similarities[order]


def as_dict(hits: list[HashHit]) -> dict[int, int]:
    result = {hit.id: hit.distance for hit in hits}
    assert len(result) == len(hits), "an id was returned twice"
    return result


# Data --------------------------------------------------------------------------


def flip_bits(rng: np.random.Generator, code: np.ndarray, k: int) -> np.ndarray:
    bits = np.unpackbits(code)
    positions = rng.choice(PDQ_BITS, size=k, replace=False)
    bits[positions] ^= 1
    return np.packbits(bits)


def unit(rng: np.random.Generator, n: int, dim: int = EMBEDDING_DIM) -> np.ndarray:
    matrix = rng.standard_normal((n, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


class Data:
    """Random codes and vectors with planted near neighbours of the queries."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        # Ids are sparse and large, as entry sequence numbers are after deletes.
        self.ids = rng.permutation(np.unique(rng.integers(1, 10**12, size=N_ENTRIES * 2, dtype=np.int64)))[:N_ENTRIES]
        assert len(self.ids) == N_ENTRIES
        self.codes = rng.integers(0, 256, size=(N_ENTRIES, PDQ_BYTES), dtype=np.uint8)
        self.vectors = unit(rng, N_ENTRIES)
        self.pdq_queries = rng.integers(0, 256, size=(N_QUERIES, PDQ_BYTES), dtype=np.uint8)
        self.vector_queries = unit(rng, N_QUERIES)
        # For each query, plant entries at several Hamming distances around the
        # radii (both sides of each boundary) and several similar vectors.
        slot = 0
        for q in range(N_QUERIES):
            for k in (0, 1, 9, 10, 11, 30, 31, 32, 62, 63, 64):
                self.codes[slot] = flip_bits(rng, self.pdq_queries[q], k)
                slot += 1
            for strength in (0.1, 0.3, 0.5):
                noisy = self.vector_queries[q] + strength * rng.standard_normal(EMBEDDING_DIM).astype(np.float32) / 4
                self.vectors[slot % N_ENTRIES] = noisy / np.linalg.norm(noisy)
                slot += 1
        assert slot < N_ENTRIES

    def index(self) -> ListIndex:
        index = ListIndex()
        index.add(self.ids, self.codes, self.vectors, change=N_ENTRIES)
        return index


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """As the server runs it: OpenMP start-up per search would dominate these tiny indexes."""
    before = faiss.omp_get_max_threads()
    configure_threads(1)
    yield
    configure_threads(before)


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


# PDQ -----------------------------------------------------------------------------


@pytest.mark.parametrize("radius", RADII)
def test_pdq_range_search_returns_exactly_the_oracles_entries_within_radius_inclusive(data: Data, radius: int) -> None:
    index = data.index()
    for query in data.pdq_queries:
        expected = oracle_pdq(data.ids, data.codes, query, radius)
        assert as_dict(index.search_pdq([query.tobytes()], radius)) == expected


def test_planted_pdq_neighbours_exist_at_and_just_beyond_each_radius(data: Data) -> None:
    """The data set really tests the boundaries: hits at d == radius and misses at radius + 1."""
    distances = np.concatenate([hamming(data.codes, q) for q in data.pdq_queries])
    for radius in RADII:
        assert (distances == radius).any()
        assert (distances == radius + 1).any()


def test_pdq_entry_at_exactly_max_distance_is_returned_and_one_beyond_is_not() -> None:
    rng = np.random.default_rng(1)
    query = rng.integers(0, 256, size=PDQ_BYTES, dtype=np.uint8)
    at = flip_bits(rng, query, 31)
    beyond = flip_bits(rng, query, 32)
    index = ListIndex()
    index.add(np.array([5, 6]), np.stack([at, beyond]), None, change=1)
    assert index.search_pdq([query.tobytes()], 31) == [HashHit(5, 31)]
    assert index.search_pdq([at.tobytes()], 0) == [HashHit(5, 0)]


def test_pdq_search_of_a_query_far_from_everything_returns_nothing(data: Data) -> None:
    index = data.index()
    query = np.bitwise_not(data.codes[0])  # 256 bits from codes[0], ~128 from the rest
    expected = oracle_pdq(data.ids, data.codes, query, 63)
    assert as_dict(index.search_pdq([query.tobytes()], 63)) == expected


# Embeddings ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, TOP_K, N_ENTRIES])
def test_vector_top_k_equals_oracle_top_k(data: Data, k: int) -> None:
    index = data.index()
    for query in data.vector_queries:
        expected_ids, expected_similarities = oracle_top_k(data.ids, data.vectors, query, k)
        hits = index.search_vectors(query, k)
        assert [hit.id for hit in hits] == expected_ids
        np.testing.assert_allclose([hit.similarity for hit in hits], expected_similarities, atol=1e-5)


def test_planted_vector_neighbours_rank_first(data: Data) -> None:
    index = data.index()
    hits = index.search_vectors(data.vector_queries[0], 3)
    # Query 0's eleven planted codes take slots 0-10, its three vectors slots 11-13.
    assert [hit.id for hit in hits] == [int(i) for i in data.ids[11:14]]
    assert all(hit.similarity > 0.25 for hit in hits)


def test_vector_search_with_k_larger_than_the_index_returns_every_entry_once(data: Data) -> None:
    index = data.index()
    hits = index.search_vectors(data.vector_queries[0], N_ENTRIES * 3)
    assert sorted(hit.id for hit in hits) == sorted(int(i) for i in data.ids)


def test_vector_search_with_k_zero_returns_nothing(data: Data) -> None:
    assert data.index().search_vectors(data.vector_queries[0], 0) == []


# Removal and one-sided adds ------------------------------------------------------------


def test_removed_ids_disappear_from_both_searches_and_the_others_stay(data: Data) -> None:
    index = data.index()
    removed = data.ids[::3]
    kept_mask = np.ones(N_ENTRIES, dtype=bool)
    kept_mask[::3] = False
    kept_ids, kept_codes, kept_vectors = data.ids[kept_mask], data.codes[kept_mask], data.vectors[kept_mask]

    index.remove(removed, change=N_ENTRIES + 1)

    assert index.pdq_count == index.vector_count == int(kept_mask.sum())
    assert index.change == N_ENTRIES + 1
    removed_set = {int(i) for i in removed}
    for query in data.pdq_queries:
        hits = as_dict(index.search_pdq([query.tobytes()], 63))
        assert hits == oracle_pdq(kept_ids, kept_codes, query, 63)
        assert not removed_set & hits.keys()
    for query in data.vector_queries:
        hits = index.search_vectors(query, TOP_K)
        assert [hit.id for hit in hits] == oracle_top_k(kept_ids, kept_vectors, query, TOP_K)[0]
        assert not removed_set & {hit.id for hit in hits}


def test_removing_unknown_ids_is_ignored() -> None:
    index = ListIndex()
    rng = np.random.default_rng(3)
    index.add(np.array([1, 2]), rng.integers(0, 256, (2, PDQ_BYTES), dtype=np.uint8), unit(rng, 2), change=2)
    index.remove(np.array([99, 100]), change=3)
    assert (index.pdq_count, index.vector_count, index.change) == (2, 2, 3)


def test_adding_with_no_vectors_adds_to_the_pdq_side_only() -> None:
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (3, PDQ_BYTES), dtype=np.uint8)
    index = ListIndex()
    index.add(np.array([10, 11, 12]), codes, None, change=3)
    assert (index.pdq_count, index.vector_count) == (3, 0)
    assert index.search_pdq([codes[1].tobytes()], 0) == [HashHit(11, 0)]
    assert index.search_vectors(unit(rng, 1)[0], 5) == []


def test_adding_with_no_pdq_codes_adds_to_the_vector_side_only() -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 3)
    index = ListIndex()
    index.add(np.array([20, 21, 22]), None, vectors, change=3)
    assert (index.pdq_count, index.vector_count) == (0, 3)
    assert index.search_pdq([bytes(PDQ_BYTES)], PDQ_BITS) == []
    assert index.search_vectors(vectors[2], 1)[0].id == 22


def test_change_only_moves_forward() -> None:
    rng = np.random.default_rng(6)
    index = ListIndex()
    index.add(np.array([1]), rng.integers(0, 256, (1, PDQ_BYTES), dtype=np.uint8), unit(rng, 1), change=9)
    index.add(np.array([2]), rng.integers(0, 256, (1, PDQ_BYTES), dtype=np.uint8), unit(rng, 1), change=4)
    index.remove(np.array([1]), change=5)
    assert index.checkpoint() == IndexCheckpoint(change=9, pdq_count=1, vector_count=1)


# Empty ------------------------------------------------------------------------------


def test_an_empty_index_returns_nothing_from_both_searches() -> None:
    index = ListIndex()
    rng = np.random.default_rng(8)
    assert index.search_pdq([bytes(PDQ_BYTES)], 0) == []
    assert index.search_pdq([bytes(PDQ_BYTES)], PDQ_BITS) == []
    assert index.search_vectors(unit(rng, 1)[0], 10) == []
    assert index.checkpoint() == IndexCheckpoint(0, 0, 0)


def test_an_index_emptied_by_removal_returns_nothing_from_both_searches() -> None:
    rng = np.random.default_rng(9)
    codes, vectors = rng.integers(0, 256, (2, PDQ_BYTES), dtype=np.uint8), unit(rng, 2)
    index = ListIndex()
    index.add(np.array([1, 2]), codes, vectors, change=2)
    index.remove(np.array([1, 2]), change=4)
    assert index.search_pdq([codes[0].tobytes()], PDQ_BITS) == []
    assert index.search_vectors(vectors[0], 10) == []


# Serialisation -----------------------------------------------------------------------


def test_serialize_then_deserialize_gives_identical_searches_and_checkpoint(data: Data) -> None:
    index = data.index()
    index.remove(data.ids[:5], change=N_ENTRIES + 5)
    snapshot = index.serialize()
    checkpoint = snapshot.checkpoint
    assert checkpoint == IndexCheckpoint(N_ENTRIES + 5, N_ENTRIES - 5, N_ENTRIES - 5)

    restored = ListIndex.deserialize(snapshot.blob)

    assert restored.checkpoint() == checkpoint
    assert restored.change == index.change
    for query in data.pdq_queries:
        for radius in RADII:
            assert as_dict(restored.search_pdq([query.tobytes()], radius)) == as_dict(
                index.search_pdq([query.tobytes()], radius)
            )
    for query in data.vector_queries:
        assert restored.search_vectors(query, TOP_K) == index.search_vectors(query, TOP_K)


def test_a_deserialized_index_still_accepts_adds_and_removes(data: Data) -> None:
    restored = ListIndex.deserialize(data.index().serialize().blob)
    rng = np.random.default_rng(10)
    code, vector = rng.integers(0, 256, (1, PDQ_BYTES), dtype=np.uint8), unit(rng, 1)
    restored.add(np.array([-7 + 10**13]), code, vector, change=N_ENTRIES + 1)
    assert HashHit(10**13 - 7, 0) in restored.search_pdq([code[0].tobytes()], 0)
    assert restored.search_vectors(vector[0], 1)[0].id == 10**13 - 7
    restored.remove(np.array([int(data.ids[0]), 10**13 - 7]), change=N_ENTRIES + 2)
    assert restored.checkpoint() == IndexCheckpoint(N_ENTRIES + 2, N_ENTRIES - 1, N_ENTRIES - 1)


def test_an_empty_index_round_trips() -> None:
    snapshot = ListIndex().serialize()
    restored = ListIndex.deserialize(snapshot.blob)
    assert restored.checkpoint() == snapshot.checkpoint == IndexCheckpoint(0, 0, 0)
    assert restored.search_pdq([bytes(PDQ_BYTES)], PDQ_BITS) == []


def _small_blob() -> bytes:
    rng = np.random.default_rng(11)
    index = ListIndex()
    index.add(np.array([1, 2, 3]), rng.integers(0, 256, (3, PDQ_BYTES), dtype=np.uint8), unit(rng, 3), change=3)
    return index.serialize().blob


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"LKIX", id="header-cut"),
        pytest.param(np.random.default_rng(12).bytes(5000), id="random-garbage"),
        pytest.param(b"\x00" * 4096, id="zeros"),
    ],
)
def test_deserialize_of_garbage_raises_value_error(blob: bytes) -> None:
    with pytest.raises(ValueError):
        ListIndex.deserialize(blob)


def test_deserialize_of_truncated_bytes_raises_value_error() -> None:
    blob = _small_blob()
    for length in (len(blob) - 1, len(blob) // 2, 30, 10):
        with pytest.raises(ValueError):
            ListIndex.deserialize(blob[:length])


def test_deserialize_of_bytes_with_trailing_junk_raises_value_error() -> None:
    with pytest.raises(ValueError):
        ListIndex.deserialize(_small_blob() + b"\x00")


def test_deserialize_of_wrong_magic_or_version_raises_value_error() -> None:
    blob = _small_blob()
    with pytest.raises(ValueError, match="format"):
        ListIndex.deserialize(b"XXXX" + blob[4:])
    with pytest.raises(ValueError, match="format"):
        ListIndex.deserialize(blob[:4] + (99).to_bytes(2, "big") + blob[6:])


def test_a_snapshot_of_format_3_from_before_spilling_is_read_with_one_cell_per_embedding(data: Data) -> None:
    one_cell = Layout(vector_cells=16, pdq_cells=16, trained_for=N_ENTRIES)
    index = ListIndex.build(data.ids, data.codes, data.vectors, change=N_ENTRIES, layout=one_cell)
    snapshot = index.serialize()
    fields = list(_HEADER.unpack_from(snapshot.blob))
    del fields[4]  # version 3 had no cells per vector
    fields[1] = 3
    old = _HEADER_V3.pack(*fields) + snapshot.blob[_HEADER.size :]
    restored = ListIndex.deserialize(old, snapshot.pieces.items())
    assert restored.layout == one_cell and restored.vector_count == N_ENTRIES
    for query in data.vector_queries:
        assert restored.search_vectors(query, TOP_K) == index.search_vectors(query, TOP_K)


def test_deserialize_of_a_header_filing_embeddings_in_no_cell_raises_value_error() -> None:
    blob = _small_blob()
    fields = list(_HEADER.unpack_from(blob))
    fields[4] = 0  # cells per vector
    with pytest.raises(ValueError, match="cells"):
        ListIndex.deserialize(_HEADER.pack(*fields) + blob[_HEADER.size :])


def test_deserialize_of_a_valid_header_over_a_corrupt_body_raises_value_error() -> None:
    """The header checks out, but the FAISS blobs inside it are garbage."""
    blob = bytearray(_small_blob())
    blob[_HEADER.size :] = np.random.default_rng(13).bytes(len(blob) - _HEADER.size)
    with pytest.raises(ValueError):
        ListIndex.deserialize(bytes(blob))


def test_deserialize_of_swapped_blobs_raises_value_error() -> None:
    blob = _small_blob()
    *layout, pdq_len, vector_len, params_len, table_len = _HEADER.unpack_from(blob)
    pdq_blob = blob[_HEADER.size : _HEADER.size + pdq_len]
    vector_blob = blob[_HEADER.size + pdq_len :]
    swapped = _HEADER.pack(*layout, vector_len, pdq_len, params_len, table_len) + vector_blob + pdq_blob
    with pytest.raises(ValueError):
        ListIndex.deserialize(swapped)


def test_deserialize_with_another_embedding_dimension_raises_value_error() -> None:
    with pytest.raises(ValueError):
        ListIndex.deserialize(_small_blob(), dim=256)


def test_pdq_search_over_several_codes_reports_each_entry_at_its_smallest_distance() -> None:
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, size=(3, PDQ_BYTES), dtype=np.uint8)
    index = ListIndex()
    index.add(np.array([1, 2, 3], dtype=np.int64), codes, None, change=1)
    variant = codes[2].copy()
    variant[0] ^= 0b111  # 3 bits away from entry 3
    hits = index.search_pdq([codes[0].tobytes(), variant.tobytes()], 10)
    assert sorted((h.id, h.distance) for h in hits) == [(1, 0), (3, 3)]
    assert index.search_pdq([], 10) == []


def crowded_list(seed: int = 3, crowd: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An exact list past HALF_SCAN_FROM (ids, vectors) and views: for each view, near copies at a spread of
    similarities and a crowd within a thousandth of each other (no two equal), closer than half precision
    tells apart."""
    rng = np.random.default_rng(seed)
    count = HALF_SCAN_FROM + 1000
    ids = rng.permutation(np.unique(rng.integers(1, 10**12, size=2 * count, dtype=np.int64)))[:count]
    vectors = unit(rng, count)
    views = unit(rng, 3)
    slot = 0
    for view in views:
        for strength in (*np.linspace(0.05, 2.0, 40), *[1.0] * crowd):
            noisy = view + strength * rng.standard_normal(EMBEDDING_DIM).astype(np.float32) / 20
            if strength == 1.0:
                noisy = view * 0.9 + vectors[0] * 0.1 + rng.standard_normal(EMBEDDING_DIM).astype(np.float32) * 3e-5
            vectors[slot] = noisy / np.linalg.norm(noisy)
            slot += 1
    return ids, vectors, views


def test_a_large_exact_list_s_half_precision_scan_answers_as_the_float_scan_to_the_bit() -> None:
    ids, vectors, views = crowded_list()
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(EMBEDDING_DIM))
    flat.add_with_ids(vectors, ids)
    half = _empty_half(EMBEDDING_DIM)
    half.add_with_ids(vectors, ids)
    for k in (1, 10, 30, 64, 200, 2000):  # the crowd ranks about 4..304: some shortlists cannot tell it apart
        for queries in (views[:1], views):
            expected = flat.search(queries, k)
            found = _search_exact(flat, half, 1.0, queries, k)
            np.testing.assert_array_equal(found[0], expected[0])  # the same floats, not merely close ones
            for scores, found_ids, expected_ids in zip(found[0], found[1], expected[1], strict=True):
                # Entries tied at the k-th score may be cut in any order (the float scan's own order varies by CPU).
                above = scores > scores[-1]
                ranked = scores[above]
                assert sorted(zip(ranked, found_ids[above], strict=True)) == sorted(
                    zip(ranked, expected_ids[above], strict=True)
                )


def test_a_large_exact_list_answers_as_a_float_scan_after_removals_and_a_snapshot_round_trip() -> None:
    ids, vectors, views = crowded_list(seed=4, crowd=0)  # no crowd: the shortlists decide
    index = ListIndex()
    index.add(ids, None, vectors, change=1)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(EMBEDDING_DIM))
    flat.add_with_ids(vectors, ids)

    def float_scan_hits(k: int) -> list[tuple[int, float]]:
        similarities, labels = flat.search(views, k)
        best: dict[int, float] = {}
        for label, similarity in zip(labels.ravel().tolist(), similarities.ravel().tolist(), strict=True):
            best[label] = max(similarity, best.get(label, -2.0))
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    for current in (index, ListIndex.deserialize(index.serialize().blob)):
        assert [(hit.id, hit.similarity) for hit in current.search_vectors(views, TOP_K)] == float_scan_hits(TOP_K)
    gone = ids[:20]  # the nearest copies of the first view
    index.remove(gone, change=2)
    flat.remove_ids(faiss.IDSelectorBatch(gone))
    for current in (index, ListIndex.deserialize(index.serialize().blob)):
        assert [(hit.id, hit.similarity) for hit in current.search_vectors(views, 50)] == float_scan_hits(50)


def test_vector_search_over_several_views_reports_each_entry_at_its_best_similarity() -> None:
    rng = np.random.default_rng(9)
    vectors = rng.normal(size=(50, EMBEDDING_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ListIndex()
    index.add(np.arange(50, dtype=np.int64), None, vectors, change=1)
    views = np.stack([vectors[3], vectors[7]])
    hits = index.search_vectors(views, 2)
    assert sorted(h.id for h in hits) == [3, 7]
    assert all(h.similarity == pytest.approx(1.0, abs=1e-5) for h in hits)


# Large-list layouts -----------------------------------------------------------------

IVF = Layout(vector_cells=16, pdq_cells=16, trained_for=N_ENTRIES, cells_per_vector=SPILLED_CELLS)
"""Few cells, so a small test list probes them all: only code compression is approximate."""


def ivf_index(data: Data) -> ListIndex:
    return ListIndex.build(data.ids, data.codes, data.vectors, change=N_ENTRIES, layout=IVF)


def test_lists_are_searched_exactly_until_they_grow_past_the_exact_limits() -> None:
    assert Layout.for_size(EXACT_VECTORS_MAX, EXACT_PDQ_MAX) == Layout(0, 0, EXACT_PDQ_MAX)
    grown = Layout.for_size(EXACT_VECTORS_MAX + 1, EXACT_VECTORS_MAX + 1)
    assert grown.vector_cells > 0 and grown.pdq_cells == 0
    assert Layout.for_size(10_000_000, 10_000_000).vector_cells <= MAX_CELLS


def test_embedding_cells_hold_about_a_thousand_entries_until_the_cap() -> None:
    assert Layout.for_size(100_000, 100_000).vector_cells == 128
    assert Layout.for_size(1_000_000, 1_000_000).vector_cells == 1024
    assert Layout.for_size(10_000_000, 10_000_000).vector_cells == MAX_CELLS


def test_lists_the_default_budget_may_not_scan_whole_are_spilled_into_two_cells() -> None:
    assert Layout.for_size(SPILL_FROM, SPILL_FROM).cells_per_vector == 1
    assert Layout.for_size(SPILL_FROM + 1, SPILL_FROM + 1).cells_per_vector == SPILLED_CELLS
    with pytest.raises(ValueError):
        Layout(vector_cells=0, cells_per_vector=2)


def test_a_layout_is_outgrown_when_its_list_crosses_a_limit_or_strays_far_from_its_training_size() -> None:
    assert not Layout().outgrown(EXACT_VECTORS_MAX, 0)
    assert Layout().outgrown(EXACT_VECTORS_MAX + 1, 0)
    trained = Layout.for_size(100_000, 100_000)
    assert not trained.outgrown(100_000 * REBUILD_GROWTH, 100_000)
    assert trained.outgrown(100_000 * REBUILD_GROWTH + 1, 100_000)
    assert trained.outgrown(EXACT_VECTORS_MAX, EXACT_VECTORS_MAX)


def test_ivf_pdq_search_probing_every_cell_equals_the_oracle(data: Data) -> None:
    index = ivf_index(data)
    for query in data.pdq_queries:
        for radius in RADII:
            assert as_dict(index.search_pdq([query.tobytes()], radius)) == oracle_pdq(
                data.ids, data.codes, query, radius
            )


def test_ivf_vector_search_finds_every_planted_neighbour_at_its_similarity_within_a_thousandth(data: Data) -> None:
    index = ivf_index(data)
    for query in data.vector_queries:
        ids, similarities = oracle_top_k(data.ids, data.vectors, query, 3)
        planted = {i: float(s) for i, s in zip(ids, similarities, strict=True) if s > 0.5}
        hits = {hit.id: hit.similarity for hit in index.search_vectors(query, 3)}
        assert len(hits) <= 3
        assert set(planted) <= set(hits)
        for entry_id, similarity in planted.items():
            assert hits[entry_id] == pytest.approx(similarity, abs=1e-3)


@pytest.mark.parametrize("build", [Data.index, ivf_index], ids=["exact", "ivf"])
def test_a_search_by_several_views_says_which_view_each_entry_is_nearest(
    data: Data, build: Callable[[Data], ListIndex]
) -> None:
    """One picture's views (the whole, the pictures found inside it) are searched together; each hit names the
    view nearest it, so that a check can say where in the picture it found the entry."""
    hits = {hit.id: hit for hit in build(data).search_vectors(data.vector_queries, 3 * N_QUERIES)}
    for view in range(N_QUERIES):
        for planted in data.ids[14 * view + 11 : 14 * view + 14]:  # the three vectors planted near this view
            assert hits[int(planted)].view == view


def test_ivf_files_each_embedding_in_its_two_nearest_cells_under_one_code(data: Data) -> None:
    index = ivf_index(data)
    ivf = faiss.extract_index_ivf(index._vectors)
    filed_in: dict[int, set[int]] = {}
    for cell in range(IVF.vector_cells):
        cell_ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(cell), ivf.invlists.list_size(cell))
        for entry_id in cell_ids.tolist():
            filed_in.setdefault(entry_id, set()).add(cell)
    _, nearest = ivf.quantizer.search(data.vectors, SPILLED_CELLS)
    assert filed_in == {int(i): set(cells.tolist()) for i, cells in zip(data.ids, nearest, strict=True)}
    assert index.vector_count == N_ENTRIES

    scores, labels = index._vectors.search(data.vector_queries[:1], 2 * N_ENTRIES)  # every code
    scored: dict[int, list[float]] = {}
    for label, score in zip(labels[0].tolist(), scores[0].tolist(), strict=True):
        scored.setdefault(label, []).append(score)
    assert all(len(copies) == 2 and copies[0] == pytest.approx(copies[1]) for copies in scored.values())


def test_ivf_snapshots_rewrite_only_the_re_rank_pieces_changed_since_the_last_saved_one(data: Data) -> None:
    index = ivf_index(data)
    first = index.serialize()
    assert first.pieces and set(first.pieces) == first.piece_numbers
    index.saved(first)
    assert index.serialize().pieces == {}, "nothing changed since the saved snapshot"
    far = 5 * PIECE_ROWS + 3  # an id in a piece of its own
    rng = np.random.default_rng(20)
    code, vector = rng.integers(0, 256, (1, PDQ_BYTES), dtype=np.uint8), unit(rng, 1)
    index.add(np.array([far]), code, vector, change=N_ENTRIES + 1)
    second = index.serialize()
    assert set(second.pieces) == {5} and second.piece_numbers == first.piece_numbers | {5}

    stored = {**first.pieces, **second.pieces}  # what a store keeps after saving both
    restored = ListIndex.deserialize(second.blob, stored.items())
    assert restored.search_vectors(vector[0], 1)[0].id == far
    for query in data.vector_queries:
        assert restored.search_vectors(query, TOP_K) == index.search_vectors(query, TOP_K)
    with pytest.raises(ValueError, match="missing"):
        ListIndex.deserialize(second.blob, first.pieces.items())
    with pytest.raises(ValueError, match="bytes"):
        ListIndex.deserialize(second.blob, [*first.pieces.items(), (5, b"short")])


def test_ivf_removals_hide_entries_at_once_and_survive_a_snapshot(data: Data) -> None:
    index = ivf_index(data)
    removed = data.ids[:50]
    index.remove(removed, change=N_ENTRIES + 1)
    assert index.vector_count == index.pdq_count == N_ENTRIES - 50
    snapshot = index.serialize()
    for restored in (index, ListIndex.deserialize(snapshot.blob, snapshot.pieces.items())):
        assert restored.layout == IVF
        assert restored.vector_count == N_ENTRIES - 50
        for vector in data.vectors[:50]:
            assert not {hit.id for hit in restored.search_vectors(vector, 10)} & {int(i) for i in removed}
        for code in data.codes[:50]:
            assert restored.search_pdq([code.tobytes()], 0) == []
        assert restored.search_vectors(data.vectors[60], 1)[0].id == data.ids[60]
    restored.remove(data.ids[60:61], change=N_ENTRIES + 2)  # the removal map came back too
    assert restored.search_pdq([data.codes[60].tobytes()], 0) == []
    assert restored.pdq_count == restored.vector_count == N_ENTRIES - 51


def test_an_ivf_layout_cannot_be_made_without_training_data() -> None:
    with pytest.raises(ValueError):
        ListIndex(layout=IVF)
    with pytest.raises(ValueError):
        ListIndex.trained(IVF, None, None)


def test_memory_estimate_counts_compressed_and_re_rank_codes_a_third_of_float_vectors(data: Data) -> None:
    exact, compressed = data.index(), ivf_index(data)
    per_entry = (exact.memory_bytes(), compressed.memory_bytes() - 16 * EMBEDDING_DIM * 4 - 16 * PDQ_BYTES)
    assert N_ENTRIES * EMBEDDING_DIM < per_entry[1] < per_entry[0] / 3


# PDQ hash tables of large lists -------------------------------------------------------------


def test_a_large_list_s_pdq_hash_tables_answer_its_searches_exactly_missing_nothing_to_31_bits(data: Data) -> None:
    index = ivf_index(data)
    memory = index.memory_bytes()
    assert not index.has_pdq_tables
    assert index.index_pdq_codes() and index.has_pdq_tables
    assert not index.index_pdq_codes(), "built once"
    assert index.memory_bytes() > memory
    for query in data.pdq_queries:
        for radius in RADII:
            hits = as_dict(index.search_pdq([query.tobytes()], radius))
            exact = oracle_pdq(data.ids, data.codes, query, radius)
            assert hits.items() <= exact.items()
            assert {i: d for i, d in exact.items() if d <= 31}.items() <= hits.items()


def test_a_list_searched_exactly_gets_no_pdq_hash_tables(data: Data) -> None:
    index = ListIndex.build(data.ids, data.codes, data.vectors, change=N_ENTRIES, layout=Layout())
    assert not index.index_pdq_codes() and not index.has_pdq_tables


def test_changes_made_while_pdq_hash_tables_are_built_are_in_them(data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build reads the codes, then files them without a lock: adds and removals go on meanwhile."""
    index = ivf_index(data)
    reading_done, changes_done = threading.Event(), threading.Event()

    def built_after_the_changes(ids: np.ndarray, codes: np.ndarray) -> SampledBitTables:
        reading_done.set()
        assert changes_done.wait(30)
        return SampledBitTables(ids, codes)

    monkeypatch.setattr(list_index, "SampledBitTables", built_after_the_changes)
    builder = threading.Thread(target=index.index_pdq_codes)
    builder.start()
    assert reading_done.wait(30)
    new_code = np.random.default_rng(30).integers(0, 256, (1, PDQ_BYTES), dtype=np.uint8)
    index.add(np.array([N_ENTRIES + 1]), new_code, None, change=N_ENTRIES + 1)
    index.remove(data.ids[:1], change=N_ENTRIES + 2)
    answered_meanwhile = as_dict(index.search_pdq([new_code[0].tobytes()], 0))
    assert answered_meanwhile == {N_ENTRIES + 1: 0}, "the binary IVF answers meanwhile"
    changes_done.set()
    builder.join(30)
    assert index.has_pdq_tables
    assert as_dict(index.search_pdq([new_code[0].tobytes()], 0)) == {N_ENTRIES + 1: 0}
    assert index.search_pdq([data.codes[0].tobytes()], 0) == []
    assert as_dict(index.search_pdq([data.codes[1].tobytes()], 0)) == {int(data.ids[1]): 0}

"""index.pdq_tables.SampledBitTables against brute force over random 256-bit codes.

Random codes are the hard case for any PDQ index: they do not cluster. A hit must always
be exact (an entry within the radius, at its true smallest distance); a miss is what the
tables trade for speed, and must stay rare out to 48 bits.
"""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.index.pdq_tables import KEY_BITS_MAX, KEY_BITS_MIN, SampledBitTables, key_bits_for

ENTRIES = 20_000
RADIUS = 63


def flipped(rng: np.random.Generator, code: np.ndarray, bits: int) -> np.ndarray:
    unpacked = np.unpackbits(code)
    unpacked[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(unpacked)


def brute_force(ids: np.ndarray, codes: np.ndarray, queries: np.ndarray, radius: int) -> dict[int, int]:
    distances = np.unpackbits(codes[None, :, :] ^ queries[:, None, :], axis=2).sum(axis=2).min(axis=0)
    return {int(i): int(d) for i, d in zip(ids, distances, strict=True) if d <= radius}


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (ENTRIES, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def tables(codes: np.ndarray) -> SampledBitTables:
    return SampledBitTables(np.arange(1, ENTRIES + 1, dtype=np.int64), codes)


def test_planted_neighbours_are_found_at_their_distance_out_to_48_bits(
    codes: np.ndarray, tables: SampledBitTables
) -> None:
    rng = np.random.default_rng(1)
    found: dict[int, list[bool]] = {0: [], 16: [], 32: []}
    for target in rng.choice(ENTRIES, 600, replace=False):
        bits = int(rng.integers(0, 49))
        hits = tables.search(flipped(rng, codes[target], bits), RADIUS)
        found[min(bits // 16, 2) * 16].append(hits.get(int(target) + 1) == bits)
    assert all(found[0]) and all(found[16])
    assert np.mean(found[32]) >= 0.98


def test_every_hit_is_within_the_radius_at_its_smallest_distance_over_the_query_codes(
    codes: np.ndarray, tables: SampledBitTables
) -> None:
    rng = np.random.default_rng(2)
    ids = np.arange(1, ENTRIES + 1)
    for target in rng.choice(ENTRIES, 20, replace=False):
        queries = np.stack([flipped(rng, codes[target], 20), flipped(rng, codes[target], 5), codes[0]])
        for radius in (0, 10, 31, 63):
            hits = tables.search(queries, radius)
            exact = brute_force(ids, codes, queries, radius)
            assert hits.items() <= exact.items()
            assert {i: d for i, d in exact.items() if d <= 31} == {i: d for i, d in hits.items() if d <= 31}


def test_entries_added_later_are_found_before_and_after_their_tail_is_merged_in(codes: np.ndarray) -> None:
    tables = SampledBitTables(np.arange(1, 5_001, dtype=np.int64), codes[:5_000])
    later = codes[5_000:]
    tables.add(np.arange(5_001, ENTRIES + 1, dtype=np.int64), later)
    assert tables.tail == len(later) and tables.tail_is_long()
    rng = np.random.default_rng(3)
    queries = [(int(row), flipped(rng, later[row], 12)) for row in rng.choice(len(later), 30, replace=False)]
    before = [tables.search(query, RADIUS) for _, query in queries]
    tables.install(tables.merged())
    assert tables.tail == 0
    for (row, query), earlier in zip(queries, before, strict=True):
        assert earlier.get(5_001 + row) == 12
        assert tables.search(query, RADIUS) == earlier
    assert tables.search(codes[17], 0) == {18: 0}, "a code filed before the merge keeps its place"


def test_removed_entries_are_not_found_whatever_order_their_ids_came_in(codes: np.ndarray) -> None:
    tables = SampledBitTables(np.array([10, 30, 20], dtype=np.int64), codes[:3])
    tables.add(np.array([5, 40], dtype=np.int64), codes[3:5])  # 5 arrives after larger ids
    tables.remove(np.array([20, 5, 999], dtype=np.int64))  # 999 was never added: ignored
    assert [tables.search(code, 0) for code in codes[:5]] == [{10: 0}, {30: 0}, {}, {}, {40: 0}]


def test_keys_grow_with_the_list_so_buckets_stay_small_until_the_cap() -> None:
    assert key_bits_for(0) == key_bits_for(200_000) == KEY_BITS_MIN
    assert key_bits_for(1_000_000) == 18
    assert key_bits_for(10_000_000) == KEY_BITS_MAX

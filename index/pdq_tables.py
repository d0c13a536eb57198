"""Sampled-bit hash tables: a large list's PDQ codes near a query, among a few thousand candidates.

Random-looking 256-bit codes make poor inverted-file cells: at 10M codes, a binary IVF scanning
200 000 of them a query found 0.935 of neighbours at 16-31 bits and 0.722 at 32-48, and at that
size the scan is bound by memory bandwidth, so more recall costs time in proportion.

Here each of `TABLES` tables files every code under a key of a few of its bits (whole nibbles,
dealt at random so that tables share as few as possible and miss a neighbour nearly
independently). A code within d bits of a query has the query's key in one table,
or a key one bit away, with a probability that falls slowly with d; probing each table's bucket
of the query's key and of its one-bit neighbours gathers the neighbours among a few thousand
candidates, whose exact distances are then computed (locality-sensitive hashing by bit sampling,
with multi-probe). Every hit is exact; only a miss is possible, and rare (docs/tuning.md, "PDQ hash tables").

The tables are derived state: built from a list's codes (never stored), they follow adds in a
tail scanned whole until it is merged into the tables, and removals in a mask. Not thread-safe:
the owning index locks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

CODE_BYTES = 32
TABLES = 40
"""Tables per list. Each holds a 4-byte position per code: 160 bytes an entry in all."""
SEED = 20_261_124
"""Fixed, so the tables (and their rare misses) are the same from run to run."""
TAIL_MIN = 10_000
TAIL_MAX = 50_000
"""Codes added since the tables were last built or merged are scanned whole; past this share of the
list (`TAIL_SHARE`), clamped to these bounds, they are merged in (a merge copies every table once)."""
TAIL_SHARE = 0.005
KEY_BITS_MIN = 16
KEY_BITS_MAX = 20
"""Key sizes: about four codes a bucket until the cap, where 10M codes fill buckets of ten and the
offsets (4 bytes a bucket, per table: 160 MiB) are still small beside the positions."""
BUILD_THREADS = 2
"""Threads that build and merge tables (NumPy's sorts and copies release the interpreter lock): at 4M
codes two built the tables in 8.2-9.8 s against 16.4-19.5 s for one, and merged 20 000 added codes
in 0.9 s against 1.6 s. A build runs at start-up or beside a rebuild, where finishing sooner is worth
the second core for a while."""
_NIBBLE_SHIFT = np.array([0, 4, 8, 12, 16], dtype=np.uint32)


def key_bits_for(count: int) -> int:
    return int(min(KEY_BITS_MAX, max(KEY_BITS_MIN, math.ceil(math.log2(max(count, 1) / 4)))))


def nibbles(codes: np.ndarray) -> np.ndarray:
    """Each code's 64 nibbles, high nibble of each byte first."""
    out = np.empty((len(codes), 2 * CODE_BYTES), dtype=np.uint8)
    out[:, 0::2] = codes >> 4
    out[:, 1::2] = codes & 15
    return out


@dataclass(frozen=True)
class _Buckets:
    """Positions sorted by key, one row a table, and where each key's bucket starts."""

    order: np.ndarray  # tables × built, uint32
    offsets: np.ndarray  # tables × (2**key_bits + 1), uint32 (flattened views index it)
    built: int

    @property
    def key_bits(self) -> int:
        return int(self.offsets.shape[1] - 1).bit_length() - 1


def _sorted_positions(keys: np.ndarray, key_bits: int) -> np.ndarray:
    """Stable order of keys, by two radix passes of at most 16 bits (NumPy's stable sort of small
    integers is a radix sort, several times faster than a comparison sort of 32-bit keys)."""
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if key_bits <= 16:
        return low.astype(np.uint32)
    high = (keys >> 16).astype(np.uint16)[low]
    return low[np.argsort(high, kind="stable")].astype(np.uint32)


def _dealt_nibbles(per_table: int, rng: np.random.Generator) -> np.ndarray:
    """Each table's nibbles: rounds of tables, each dealing a shuffle of all 64 nibbles out, so no
    two tables of a round share one. At 10M random codes this raised recall at 32-48 bits from
    0.986 (nibbles drawn per table, tables overlapping by chance) to 0.992 (docs/tuning.md, "PDQ hash tables")."""
    per_round = 2 * CODE_BYTES // per_table
    rounds = [rng.permutation(2 * CODE_BYTES)[: per_round * per_table] for _ in range(-(-TABLES // per_round))]
    return np.concatenate(rounds).reshape(-1, per_table)[:TABLES]


def _in_parallel(work: Callable[[int], None], items: range) -> None:
    """`work` on every item, on BUILD_THREADS threads (each item writes its own slice of shared arrays)."""
    with ThreadPoolExecutor(BUILD_THREADS, thread_name_prefix="pdq-tables") as pool:
        for _ in pool.map(work, items):  # re-raises the first error
            pass


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each row of four 64-bit words (summed column by column: faster than a reduction)."""
    counts = np.bitwise_count(words)
    return counts[:, 0].astype(np.int64) + counts[:, 1] + counts[:, 2] + counts[:, 3]


class SampledBitTables:
    """Hash tables over PDQ codes keyed by entry id (an int64, as the rest of the index)."""

    def __init__(self, ids: np.ndarray, codes: np.ndarray, key_bits: int | None = None) -> None:
        order = np.argsort(ids, kind="stable")
        count = len(ids)
        self._ids = np.ascontiguousarray(ids[order], dtype=np.int64)
        self._codes = np.ascontiguousarray(codes[order], dtype=np.uint8).reshape(count, CODE_BYTES)
        self._alive = np.ones(count, dtype=bool)
        self._count = count
        self._ids_sorted = True
        """Ids only grow in a list, so positions are in id order and a removal finds its ids by binary search."""
        self._id_order: np.ndarray | None = None
        """Otherwise, positions in id order for that search (sorted again after out-of-order adds)."""
        key_bits = key_bits or key_bits_for(count)
        nibble_count = -(-key_bits // 4)
        self._key_nibbles = _dealt_nibbles(nibble_count, np.random.default_rng(SEED))
        self._shifts = _NIBBLE_SHIFT[:nibble_count]
        self._key_mask = np.uint32((1 << key_bits) - 1)
        self._probe_masks = np.array([0] + [1 << bit for bit in range(key_bits)], dtype=np.uint32)
        self._probe_tables = np.repeat(np.arange(TABLES, dtype=np.int64), len(self._probe_masks))
        """The table of each of one query's probes, in probe order."""
        self._buckets = self._build(key_bits)

    # Keys and buckets ---------------------------------------------------------

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """Every table's key of each code: tables × rows, uint32, built a nibble slot at a time over
        whole columns (a build calls it in chunks whose temporaries stay in cache: at 4M codes the
        keys took 6 s, against 10 s gathering rows × tables × nibbles)."""
        columns = nibbles(codes).T.astype(np.uint32)  # 64 × rows
        keys = np.zeros((TABLES, len(codes)), dtype=np.uint32)
        for slot, shift in enumerate(self._shifts):
            keys |= columns[self._key_nibbles[:, slot]] << shift
        keys &= self._key_mask
        return keys

    def _all_keys(self, start: int, stop: int, chunk: int = 32_768) -> np.ndarray:
        keys = np.empty((TABLES, stop - start), dtype=np.uint32)

        def fill(first: int) -> None:
            last = min(stop, first + chunk)
            keys[:, first - start : last - start] = self._keys(self._codes[first:last])

        _in_parallel(fill, range(start, stop, chunk))
        return keys

    def _build(self, key_bits: int) -> _Buckets:
        keys = self._all_keys(0, self._count)
        order = np.empty((TABLES, self._count), dtype=np.uint32)
        offsets = np.zeros((TABLES, (1 << key_bits) + 1), dtype=np.uint32)

        def file(table: int) -> None:
            order[table] = _sorted_positions(keys[table], key_bits)
            np.cumsum(np.bincount(keys[table], minlength=1 << key_bits), out=offsets[table, 1:])

        _in_parallel(file, range(TABLES))
        return _Buckets(order, offsets, self._count)

    def merged(self) -> _Buckets:
        """The tables with the tail filed in; the current ones stay valid for searches meanwhile
        (install the result with `install`, with no add in between)."""
        current = self._buckets
        start, stop = current.built, self._count
        keys = self._all_keys(start, stop)
        positions = np.arange(start, stop, dtype=np.uint32)
        key_bits = current.key_bits
        order = np.empty((TABLES, stop), dtype=np.uint32)
        offsets = np.empty_like(current.offsets)

        def file(table: int) -> None:
            by_key = np.argsort(keys[table], kind="stable")
            table_keys = keys[table][by_key]
            # After the bucket's current codes: positions within a bucket stay in order.
            bucket_ends = current.offsets[table][table_keys + 1].astype(np.int64)
            order[table] = np.insert(current.order[table], bucket_ends, positions[by_key])
            offsets[table, 0] = 0
            added = np.cumsum(np.bincount(table_keys, minlength=1 << key_bits), dtype=np.uint32)
            offsets[table, 1:] = current.offsets[table, 1:] + added

        _in_parallel(file, range(TABLES))
        return _Buckets(order, offsets, stop)

    def install(self, buckets: _Buckets) -> None:
        self._buckets = buckets

    # Changes ------------------------------------------------------------------

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Append entries to the tail (scanned whole until merged)."""
        if not len(ids):
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        needed = self._count + len(ids)
        if needed > len(self._ids):
            capacity = max(needed, len(self._ids) * 5 // 4 + 1024)
            self._ids = np.resize(self._ids, capacity)
            self._codes = np.resize(self._codes, (capacity, CODE_BYTES))
            self._alive = np.resize(self._alive, capacity)
        previous_last = self._ids[self._count - 1] if self._count else np.iinfo(np.int64).min
        if ids[0] <= previous_last or np.any(np.diff(ids) <= 0):
            self._ids_sorted, self._id_order = False, None
        self._ids[self._count : needed] = ids
        self._codes[self._count : needed] = codes
        self._alive[self._count : needed] = True
        self._count = needed

    def remove(self, ids: np.ndarray) -> None:
        """Mask entries out (their positions stay in the tables until the index is rebuilt)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self._count:
            return
        known = self._ids[: self._count]
        if not self._ids_sorted and self._id_order is None:
            self._id_order = np.argsort(known, kind="stable")
        slots = np.searchsorted(known, ids, sorter=self._id_order).clip(0, self._count - 1)
        positions = slots if self._id_order is None else self._id_order[slots]
        self._alive[positions[known[positions] == ids]] = False

    @property
    def tail(self) -> int:
        return self._count - self._buckets.built

    def tail_is_long(self) -> bool:
        return self.tail > min(TAIL_MAX, max(TAIL_MIN, int(self._count * TAIL_SHARE)))

    # Searches -----------------------------------------------------------------

    def search(self, queries: np.ndarray, max_distance: int) -> dict[int, int]:
        """Ids of live entries within `max_distance` bits (inclusive) of any query code, each
        with its smallest distance."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, CODE_BYTES)
        buckets, count = self._buckets, self._count
        words = self._codes[:count].view(np.uint64)
        query_words = queries.view(np.uint64)
        found_positions, found_distances = [], []
        if buckets.built:
            keys = self._keys(queries).T  # queries × tables
            row = np.arange(TABLES, dtype=np.int64) * buckets.offsets.shape[1]
            probes = ((keys[:, :, None] ^ self._probe_masks).astype(np.int64) + row[None, :, None]).ravel()
            flat_offsets = buckets.offsets.ravel()
            starts = flat_offsets[probes].astype(np.int64)
            lengths = flat_offsets[probes + 1].astype(np.int64) - starts
            # Each probe's bucket is a run of one table's row of `order`: gather every run at once.
            run_starts = starts + np.tile(self._probe_tables, len(queries)) * buckets.built
            total = int(lengths.sum())
            ends = np.cumsum(lengths)
            gather = np.repeat(run_starts - (ends - lengths), lengths) + np.arange(total)
            candidates = np.take(buckets.order.ravel(), gather).astype(np.int64)
            # Probes run query by query, so each query's candidates are one run of them.
            of_query = np.repeat(np.arange(len(queries)), lengths.reshape(len(queries), -1).sum(axis=1))
            # np.take gathers rows of a 2-D array about ten times faster than indexing with [].
            distances = _popcount(np.take(words, candidates, axis=0) ^ np.take(query_words, of_query, axis=0))
            near = distances <= max_distance
            found_positions.append(candidates[near])
            found_distances.append(distances[near])
        if count > buckets.built:  # the tail, scanned whole
            tail = words[buckets.built :]
            distances = np.min([_popcount(tail ^ words_of_query) for words_of_query in query_words], axis=0)
            in_tail = np.flatnonzero(distances <= max_distance)
            found_positions.append(in_tail + buckets.built)
            found_distances.append(distances[in_tail])
        if not found_positions:
            return {}
        positions = np.concatenate(found_positions)
        distances = np.concatenate(found_distances)
        live = self._alive[positions]
        nearest: dict[int, int] = {}
        for id_, distance in zip(self._ids[positions[live]].tolist(), distances[live].tolist(), strict=True):
            if distance < nearest.get(id_, CODE_BYTES * 8 + 1):
                nearest[id_] = distance
        return nearest

    def memory_bytes(self) -> int:
        arrays = (self._ids, self._codes, self._alive, self._buckets.order, self._buckets.offsets)
        return sum(int(array.nbytes) for array in arrays)

"""One byte per dimension of every embedding of a large list, in memory, to re-rank a shortlist.

An inverted file's 16-byte codes only estimate similarity, so its shortlist is re-ranked. The
float vectors in LMDB are exact, but at millions of entries reading a shortlist of them hits the
disk (hundreds of ms a query). Eight bits per dimension, scaled to each dimension's range seen in
training, keep a cosine within about 0.005 of the float one at 512 bytes an entry (5 GB at 10M),
and a shortlist of hundreds re-ranks in well under a millisecond.

Codes live in pieces of `PIECE_ROWS` rows addressed by entry sequence number (a list's sequence
numbers only grow), so an add touches one piece and a snapshot rewrites only the pieces changed
since the last one saved. A piece is stored as the rows written in it and their codes, so sparse
ids cost only what they hold.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PIECE_SHIFT = 16
PIECE_ROWS = 1 << PIECE_SHIFT
"""Rows of one piece: 32 MiB of 512-byte codes, the unit of snapshot rewrites."""
RANGE_MARGIN = 0.1
"""Each dimension's trained range is widened by this share on both sides: later entries may stray."""
_PIECE = struct.Struct(">II")  # piece number, rows written
_ROW = np.dtype("<u4")


@dataclass(frozen=True)
class PieceState:
    """What a snapshot needs of the codes: every piece's count of rows, and the bytes of changed pieces."""

    rows: dict[int, int]
    changed: dict[int, bytes]
    versions: dict[int, int]


class RerankCodes:
    """8-bit scalar-quantised embeddings by sequence number. Not thread-safe: the owning index locks."""

    def __init__(self, low: np.ndarray, step: np.ndarray) -> None:
        self._low = np.ascontiguousarray(low, dtype=np.float32)
        self._step = np.ascontiguousarray(step, dtype=np.float32)
        self.dim = len(self._low)
        self._pieces: dict[int, np.ndarray] = {}
        self._written: dict[int, np.ndarray] = {}
        """Per piece, which of its rows hold a code."""
        self._unsaved: dict[int, int] = {}
        """Pieces changed since the last snapshot saved, each with a version that grows on every change."""

    @classmethod
    def trained(cls, sample: np.ndarray) -> RerankCodes:
        """Codes scaled to the range of each dimension in `sample` (widened by `RANGE_MARGIN`)."""
        low, high = sample.min(axis=0), sample.max(axis=0)
        margin = (high - low) * RANGE_MARGIN
        low, high = low - margin, high + margin
        return cls(low, np.maximum((high - low) / 255.0, np.float32(1e-9)))

    def _rows(self) -> dict[int, int]:
        return {number: int(written.sum()) for number, written in self._written.items()}

    def memory_bytes(self) -> int:
        """Rows written, removed entries' included (they are never read again), at one byte a dimension."""
        return sum(self._rows().values()) * self.dim

    def _piece(self, number: int) -> np.ndarray:
        piece = self._pieces.get(number)
        if piece is None:
            # Anonymous memory costs a page only once written. (numpy.zeros would ask for huge pages,
            # so a piece holding a few sparse ids would cost 2 MiB each.)
            pages = mmap.mmap(-1, PIECE_ROWS * self.dim, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            piece = self._pieces[number] = np.frombuffer(pages, dtype=np.uint8).reshape(PIECE_ROWS, self.dim)
            self._written[number] = np.zeros(PIECE_ROWS, dtype=bool)
        return piece

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        codes = np.rint((vectors - self._low) / self._step)
        codes = np.clip(codes, 0, 255, out=codes).astype(np.uint8)
        numbers, rows = ids >> PIECE_SHIFT, ids & (PIECE_ROWS - 1)
        for number in np.unique(numbers).tolist():
            chosen = numbers == number
            self._piece(number)[rows[chosen]] = codes[chosen]
            self._written[number][rows[chosen]] = True
            self._unsaved[number] = self._unsaved.get(number, 0) + 1

    def similarities(self, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Inner products of each query (rows) with each id's decoded vector (columns)."""
        codes = np.empty((len(ids), self.dim), dtype=np.uint8)
        numbers = ids >> PIECE_SHIFT
        order = np.argsort(numbers, kind="stable")
        sorted_numbers = numbers[order]
        starts = np.flatnonzero(np.r_[True, sorted_numbers[1:] != sorted_numbers[:-1]])
        for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(ids)], strict=True):
            positions = order[start:end]
            codes[positions] = self._pieces[int(sorted_numbers[start])][ids[positions] & (PIECE_ROWS - 1)]
        # decoded = low + code · step, so q · decoded = q · low + (q ∘ step) · code
        return (queries * self._step) @ codes.T.astype(np.float32) + (queries @ self._low)[:, np.newaxis]

    # Snapshots ----------------------------------------------------------------

    def params(self) -> bytes:
        return self._low.tobytes() + self._step.tobytes()

    @classmethod
    def from_params(cls, data: bytes, dim: int) -> RerankCodes:
        if len(data) != 8 * dim:
            raise ValueError(f"re-rank parameters hold {len(data)} bytes; expected {8 * dim}")
        values = np.frombuffer(data, dtype=np.float32)
        return cls(values[:dim].copy(), values[dim:].copy())

    def piece_state(self) -> PieceState:
        changed = {}
        for number in self._unsaved:
            rows = np.flatnonzero(self._written[number])
            changed[number] = rows.astype(_ROW).tobytes() + self._pieces[number][rows].tobytes()
        return PieceState(self._rows(), changed, dict(self._unsaved))

    def saved(self, versions: dict[int, int]) -> None:
        """Pieces of a saved snapshot need no rewrite, unless they changed since it was taken."""
        for number, version in versions.items():
            if self._unsaved.get(number) == version:
                del self._unsaved[number]

    @staticmethod
    def pack_rows(rows: dict[int, int]) -> bytes:
        return b"".join(_PIECE.pack(number, count) for number, count in sorted(rows.items()))

    def load(self, table: bytes, pieces: Iterable[tuple[int, bytes | memoryview]]) -> None:
        """Fill the pieces named in `table` (from `pack_rows`) from stored bytes; ValueError when any
        is missing or of the wrong size."""
        if len(table) % _PIECE.size:
            raise ValueError("re-rank piece table is truncated")
        wanted = dict(_PIECE.iter_unpack(table))
        for number, data in pieces:
            if number not in wanted:
                continue
            count = wanted[number]
            expected = count * (_ROW.itemsize + self.dim)
            if len(data) != expected:
                raise ValueError(f"re-rank piece {number} holds {len(data)} bytes; expected {expected}")
            rows = np.frombuffer(data, dtype=_ROW, count=count).astype(np.int64)
            if count and rows.max() >= PIECE_ROWS:
                raise ValueError(f"re-rank piece {number} names a row past {PIECE_ROWS}")
            codes = np.frombuffer(data, dtype=np.uint8, offset=count * _ROW.itemsize).reshape(count, self.dim)
            self._piece(number)[rows] = codes
            self._written[number][rows] = True
        if missing := set(wanted) - set(self._written):
            raise ValueError(f"re-rank pieces {sorted(missing)} are missing from the snapshot")

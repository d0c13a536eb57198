"""One disallow list's in-memory indexes: PDQ codes (Hamming) and embeddings (inner product).

Both are keyed by the list's int64 entry sequence numbers, so a match from either
side names the same entry. The index is a cache of what the store holds: it is
serialised with a checkpoint (the last change it reflects) so a restart loads it
and replays only newer changes, never recomputing an embedding.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
EMBEDDING_DIM = 512

_MAGIC = b"LKIX"
_FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sHQQQ")  # magic, version, checkpoint change, pdq blob len, vector blob len


def configure_threads(threads: int = 1) -> None:
    """FAISS's OpenMP threads fight request threads on small machines: use one."""
    faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class IndexCheckpoint:
    """The last store change an index reflects, and how many entries it holds."""

    change: int
    pdq_count: int
    vector_count: int


@dataclass(frozen=True)
class HashHit:
    id: int
    distance: int


@dataclass(frozen=True)
class VectorHit:
    id: int
    similarity: float


class ListIndex:
    """PDQ and embedding indexes of one list; safe to share across threads."""

    def __init__(self, dim: int = EMBEDDING_DIM) -> None:
        self.dim = dim
        self._pdq: faiss.IndexBinary = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(PDQ_BITS))
        self._vectors: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.RLock()
        self.change = 0

    @property
    def pdq_count(self) -> int:
        return int(self._pdq.ntotal)

    @property
    def vector_count(self) -> int:
        return int(self._vectors.ntotal)

    def add(self, ids: np.ndarray, pdq_codes: np.ndarray | None, vectors: np.ndarray | None, change: int) -> None:
        """Add entries (either signal may be absent) and record the change they came from."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self._lock:
            if pdq_codes is not None and len(ids):
                codes = np.ascontiguousarray(pdq_codes, dtype=np.uint8).reshape(len(ids), PDQ_BYTES)
                self._pdq.add_with_ids(codes, ids)
            if vectors is not None and len(ids):
                matrix = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
                self._vectors.add_with_ids(matrix, ids)
            self.change = max(self.change, change)

    def remove(self, ids: np.ndarray, change: int) -> None:
        """Remove entries by id; ids not present are ignored."""
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        with self._lock:
            self._pdq.remove_ids(selector)
            self._vectors.remove_ids(selector)
            self.change = max(self.change, change)

    def search_pdq(self, codes: Sequence[bytes], max_distance: int) -> list[HashHit]:
        """Entries within `max_distance` bits (inclusive) of any of `codes`, each at its
        smallest distance (codes are one picture's variants, e.g. its rotations)."""
        if not codes:
            return []
        query = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), PDQ_BYTES)
        with self._lock:
            if self._pdq.ntotal == 0:
                return []
            # FAISS keeps distances strictly below the radius: ask for one more.
            _, distances, labels = self._pdq.range_search(query, max_distance + 1)
        nearest: dict[int, int] = {}
        for label, distance in zip(labels.tolist(), distances.astype(np.int64).tolist(), strict=True):
            if distance < nearest.get(label, PDQ_BITS + 1):
                nearest[label] = distance
        return [HashHit(label, distance) for label, distance in nearest.items()]

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[VectorHit]:
        """The k entries of highest inner product (cosine, for unit vectors) with any of
        `vectors` (one picture's views: whole, region), each at its best similarity."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            if self._vectors.ntotal == 0 or k <= 0:
                return []
            similarities, labels = self._vectors.search(queries, min(k, int(self._vectors.ntotal)))
        best: dict[int, float] = {}
        for label, similarity in zip(labels.ravel().tolist(), similarities.ravel().tolist(), strict=True):
            if label >= 0 and similarity > best.get(label, -2.0):
                best[label] = similarity
        ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
        return [VectorHit(label, similarity) for label, similarity in ranked]

    def checkpoint(self) -> IndexCheckpoint:
        with self._lock:
            return IndexCheckpoint(self.change, self.pdq_count, self.vector_count)

    def serialize(self) -> tuple[IndexCheckpoint, bytes]:
        """Bytes of both indexes with their checkpoint, taken atomically."""
        with self._lock:
            pdq_blob = faiss.serialize_index_binary(self._pdq).tobytes()
            vector_blob = faiss.serialize_index(self._vectors).tobytes()
            checkpoint = IndexCheckpoint(self.change, self.pdq_count, self.vector_count)
        header = _HEADER.pack(_MAGIC, _FORMAT_VERSION, checkpoint.change, len(pdq_blob), len(vector_blob))
        return checkpoint, header + pdq_blob + vector_blob

    @classmethod
    def deserialize(cls, data: bytes, dim: int = EMBEDDING_DIM) -> ListIndex:
        """Rebuild an index from `serialize()` output; raises ValueError when unreadable."""
        if len(data) < _HEADER.size:
            raise ValueError("index snapshot is truncated")
        magic, version, change, pdq_len, vector_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _FORMAT_VERSION:
            raise ValueError(f"index snapshot has format {magic!r} v{version}; expected {_MAGIC!r} v{_FORMAT_VERSION}")
        if len(data) != _HEADER.size + pdq_len + vector_len:
            raise ValueError("index snapshot length does not match its header")
        start = _HEADER.size
        pdq_blob = np.frombuffer(data, dtype=np.uint8, count=pdq_len, offset=start)
        vector_blob = np.frombuffer(data, dtype=np.uint8, count=vector_len, offset=start + pdq_len)
        index = cls(dim)
        try:
            index._pdq = faiss.deserialize_index_binary(pdq_blob)
            index._vectors = faiss.deserialize_index(vector_blob)
        except RuntimeError as error:  # FAISS reports a corrupt blob as RuntimeError
            raise ValueError(f"index snapshot is corrupt: {error}") from None
        if index._pdq.d != PDQ_BITS or index._vectors.d != dim:
            raise ValueError(f"index snapshot holds {index._pdq.d}-bit codes and {index._vectors.d}-d vectors")
        index.change = int(change)
        return index

"""Synthetic list entries for the speed benchmarks: random unit embeddings and PDQ codes,
shaped as the store keeps them (a SHA-256 per entry, so none is a duplicate)."""

from __future__ import annotations

import hashlib

import numpy as np

from lookalike.server.records import NewEntry
from lookalike.server.scoring import DEFAULT_MODEL


def unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, 512), dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def new_entries(start: int, vectors: np.ndarray, codes: np.ndarray, model: str = DEFAULT_MODEL) -> list[NewEntry]:
    return [
        NewEntry(
            id=f"s{start + i}",
            sha256=hashlib.sha256((start + i).to_bytes(8, "big")).digest(),
            pdq=codes[i].tobytes(),
            pdq_quality=100,
            phash=bytes(8),
            model=model,
            embedding=vectors[i],
            meta={},
        )
        for i in range(len(vectors))
    ]

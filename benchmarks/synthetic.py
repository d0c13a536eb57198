"""Synthetic list entries for the speed benchmarks: random unit embeddings and PDQ codes,
shaped as the store keeps them (a SHA-256 per entry, so none is a duplicate)."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from lookalike.server.changes import EntriesAdded, ListCreated
from lookalike.server.records import NewEntry, encode_embedding
from lookalike.server.scoring import DEFAULT_MODEL


def unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, 512), dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def new_list(name: str, description: str, model: str = DEFAULT_MODEL) -> ListCreated:
    """The change that creates a list with the default thresholds."""
    return ListCreated(
        time=time.time(), name=name, description=description, review_threshold=0.5, reject_threshold=0.8, model=model
    )


def new_entries(
    list_name: str, start: int, vectors: np.ndarray, codes: np.ndarray, model: str = DEFAULT_MODEL
) -> EntriesAdded:
    """The change that adds entries s{start}, s{start + 1}, ... with these embeddings and PDQ codes."""
    entries = tuple(
        NewEntry(
            id=f"s{start + i}",
            sha256=hashlib.sha256((start + i).to_bytes(8, "big")).digest(),
            pdq=codes[i].tobytes(),
            pdq_quality=100,
            phash=bytes(8),
            embedding=encode_embedding(vectors[i]),
        )
        for i in range(len(vectors))
    )
    return EntriesAdded(time=time.time(), list=list_name, model=model, entries=entries)

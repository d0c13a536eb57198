"""Fingerprints of one image: exact digest, perceptual hashes, copy-detection embedding.

The hashes are cheap and always computed; embeddings cost tens of milliseconds,
so they are computed per model, only for the models the lists being touched use.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import imagehash
import numpy as np
from PIL import Image

from lookalike.server.embedder import EmbedderPool, EmbeddingBatcher, embedding_input
from lookalike.server.imaging import DecodedImage, decode_image
from lookalike.server.pdq import pdq_hashes
from lookalike.server.regions import content_box

PDQ_BYTES = 32
PHASH_BYTES = 8


@dataclass(frozen=True)
class Hashes:
    """What every image gets, whatever the list: digests, PDQ and pHash. A check by hashes
    has only those it was given (the others empty)."""

    sha256: bytes
    pdq: bytes
    pdq_quality: int
    phash: bytes
    md5: bytes = b""

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def pdq_hex(self) -> str:
        return self.pdq.hex()

    @property
    def phash_hex(self) -> str:
        return self.phash.hex()

    @property
    def md5_hex(self) -> str:
        return self.md5.hex()


@dataclass
class Fingerprint:
    """Hashes plus embeddings computed lazily, one per model asked for."""

    hashes: Hashes
    image: DecodedImage
    model_input: Image.Image
    """The picture at the embedding's input size; pHash is taken from it too."""
    pdq_variants: tuple[bytes, ...]
    """PDQ of the picture's eight rotations and mirrors: a turned re-upload still matches."""
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    """Per model: the whole picture's embedding (what an entry stores)."""
    views: dict[str, np.ndarray] = field(default_factory=dict)
    """Per model: the embeddings a check searches with, one row per view."""
    stage_seconds: list[tuple[str, float]] = field(default_factory=list)
    """Time spent per stage (decode, hash, embed, region), for metrics kept by the caller."""

    @cached_property
    def region_input(self) -> Image.Image | None:
        """The picture found inside a larger canvas (screenshot, border), at model input
        size; looked for only when a check needs it, never for an add."""
        box = content_box(self.image.shown)
        return None if box is None else embedding_input(self.image.crop(box))


@dataclass(frozen=True)
class Fingerprinted:
    """Everything one request needs from an image, computed in one go (in a worker process or
    not): plain data, cheap to send between processes."""

    hashes: Hashes
    pdq_variants: tuple[bytes, ...]
    embeddings: dict[str, np.ndarray]
    """Per model asked for: the whole picture's embedding (what an entry stores)."""
    views: dict[str, np.ndarray]
    """Per model asked for: the embeddings a check searches with, one row per view."""
    stage_seconds: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ModelInputs:
    """An image fingerprinted up to its embeddings, for models that run elsewhere (batched on a GPU)."""

    fingerprinted: Fingerprinted
    """Hashes and stages so far; no embeddings yet."""
    pictures: tuple[np.ndarray, ...]
    """uint8 HWC pictures at the model's input size: the whole picture, then its region when one was found
    (looked for only when views are asked for); none when no model is."""
    embed: tuple[str, ...]
    views: tuple[str, ...]

    def embedded(self, batcher: EmbeddingBatcher) -> Fingerprinted:
        """The Fingerprinted that `Fingerprinter.compute` gives, its embeddings from `batcher` (all asked at once)."""
        started = time.perf_counter()
        asked = {
            (model, number): batcher.submit(model, picture)
            for model in dict.fromkeys((*self.embed, *self.views))
            for number, picture in enumerate(self.pictures if model in self.views else self.pictures[:1])
        }
        vectors = {key: future.result() for key, future in asked.items()}
        done = self.fingerprinted
        return Fingerprinted(
            done.hashes,
            done.pdq_variants,
            {model: vector for (model, number), vector in vectors.items() if number == 0},
            {model: np.stack([vectors[model, n] for n in range(len(self.pictures))]) for model in self.views},
            (*done.stage_seconds, ("embed", time.perf_counter() - started)) if asked else done.stage_seconds,
        )


@contextmanager
def _timed(stages: list[tuple[str, float]], stage: str) -> Iterator[None]:
    """Note a stage's duration; metrics live in the server process, this may run in a worker."""
    started = time.perf_counter()
    try:
        yield
    finally:
        stages.append((stage, time.perf_counter() - started))


def phash(rgb: Image.Image) -> bytes:
    """imagehash's 64-bit DCT hash, packed. Taken from the small model input:
    its 32×32 resize then costs a tenth, and the bits barely move."""
    return np.packbits(imagehash.phash(rgb).hash.flatten().astype(np.uint8)).tobytes()


class Fingerprinter:
    """Decodes and fingerprints images with the configured pixel limit and models."""

    def __init__(self, max_pixels: int, embedders: EmbedderPool) -> None:
        self.max_pixels = max_pixels
        self.embedders = embedders

    def fingerprint(self, data: bytes) -> Fingerprint:
        stages: list[tuple[str, float]] = []
        with _timed(stages, "decode"):
            decoded = decode_image(data, self.max_pixels)
        with _timed(stages, "hash"):
            variants, quality = pdq_hashes(decoded.pdq_rgb, decoded.original_size)
            model_input = embedding_input(decoded.rgb)
            hashes = Hashes(
                sha256=hashlib.sha256(data).digest(),
                pdq=variants[0],
                pdq_quality=quality,
                phash=phash(model_input),
                md5=hashlib.md5(data, usedforsecurity=False).digest(),  # shared lists carry MD5s
            )
        return Fingerprint(hashes, decoded, model_input, variants, stage_seconds=stages)

    def compute(self, data: bytes, embed: Sequence[str] = (), views: Sequence[str] = ()) -> Fingerprinted:
        """Hashes, plus embeddings for the models in `embed` and check views for those in `views`."""
        fingerprint = self.fingerprint(data)
        for model in embed:
            self.embedding(fingerprint, model)
        for model in views:
            self.views(fingerprint, model)
        return Fingerprinted(
            fingerprint.hashes,
            fingerprint.pdq_variants,
            fingerprint.embeddings,
            fingerprint.views,
            tuple(fingerprint.stage_seconds),
        )

    def model_inputs(self, data: bytes, embed: Sequence[str] = (), views: Sequence[str] = ()) -> ModelInputs:
        """What `compute` does short of running the models: their input pictures instead."""
        fingerprint = self.fingerprint(data)
        pictures = [np.asarray(fingerprint.model_input, dtype=np.uint8)] if embed or views else []
        if views:
            with _timed(fingerprint.stage_seconds, "region"):
                region = fingerprint.region_input
            if region is not None:
                pictures.append(np.asarray(region, dtype=np.uint8))
        hashes_only = Fingerprinted(
            fingerprint.hashes, fingerprint.pdq_variants, {}, {}, tuple(fingerprint.stage_seconds)
        )
        return ModelInputs(hashes_only, tuple(pictures), tuple(embed), tuple(views))

    def embedding(self, fingerprint: Fingerprint, model: str) -> np.ndarray:
        """The picture's embedding under `model` (what an entry stores), computed once."""
        vector = fingerprint.embeddings.get(model)
        if vector is None:
            with _timed(fingerprint.stage_seconds, "embed"):
                vector = self.embedders.get(model).embed(fingerprint.model_input)
            fingerprint.embeddings[model] = vector
        return vector

    def views(self, fingerprint: Fingerprint, model: str) -> np.ndarray:
        """The embeddings a check searches with: the whole picture, then its region if found."""
        views = fingerprint.views.get(model)
        if views is None:
            rows = [self.embedding(fingerprint, model)]
            with _timed(fingerprint.stage_seconds, "region"):
                region = fingerprint.region_input
            if region is not None:
                with _timed(fingerprint.stage_seconds, "embed"):
                    rows.append(self.embedders.get(model).embed(region))
            views = fingerprint.views[model] = np.stack(rows)
        return views

"""Fingerprints of one image: exact digest, perceptual hashes, copy-detection embedding.

The hashes are cheap and always computed; embeddings cost tens of milliseconds,
so they are computed per model, only for the models the lists being touched use.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property

import imagehash
import numpy as np
import scipy.fftpack
from PIL import Image

from lookalike.server.embedder import EmbedderPool, EmbeddingBatcher, embedding_input, resized_to
from lookalike.server.imaging import DRAFT_SHORT_SIDE, DecodedImage, decode_image, thumbnail_webp
from lookalike.server.keypoints import entry_keypoints, query_keypoints
from lookalike.server.pdq import pdq_hashes
from lookalike.server.regions import (
    Box,
    Quad,
    Regions,
    find_regions,
    finder_picture,
    overlap,
    rectified,
    straightened,
    turned_box,
)

PDQ_BYTES = 32
PHASH_BYTES = 8
FRAME_SHORT_SIDE = 224
"""Short side a framed picture other than the best is embedded at: 0.6 of the plain view's pixels, and a
crop's similarity to its entry drops little (0.84 against 0.93 on average for pictures pasted on photos).
The best frame is embedded at the model's input size, where a pasted copy can reach the cosine that
rejects (0.93: a quarter of pastes on photos there, almost none at 224)."""
CELL_SHORT_SIDE = 160
"""Short side a collage's cells are embedded at (all in one batch): nine cost what about two plain
views do, and most cells still reach the review level."""
MAX_REGION_VIEWS = 2
"""Framed pictures embedded per check at most (the flat-canvas box counts), best supported first."""
SAME_REGION = 0.7
"""Frames overlapping the flat-canvas box this much (intersection over union) are that box."""

Cutter = Callable[[Sequence[Box], int], list[Image.Image]]
"""Cuts boxes out of a picture, each part with its short side at least the given one where the pixels allow."""

WHOLE, PART, FRAME = "whole", "part", "frame"
"""What a view of a checked picture is: the picture itself, a picture found inside it, another frame of it."""


@dataclass(frozen=True)
class Place:
    """Where in a checked picture one of its views lies: what a reviewer is shown to look at."""

    kind: str
    """WHOLE, PART or FRAME."""
    box: Box
    """Left, top, right, bottom in the file's pixels as shown (its EXIF turn applied). A part found turned or
    on a photographed screen: the upright box around it; a part inside a turned picture: that picture's box."""
    frame: int = 0
    """The animation frame the view is of (0: the first)."""

    def scaled(self, across: float, down: float) -> Place:
        """The same place in the pixels of a copy of the picture `across` times as wide, `down` times as tall."""
        left, top, right, bottom = self.box
        box = (round(left * across), round(top * down), round(right * across), round(bottom * down))
        return replace(self, box=box)


Placed = list[tuple[Image.Image, Place]]
"""A batch of views of one size, each with its place."""


@dataclass(frozen=True)
class Hashes:
    """What every image gets, whatever the list: digests, PDQ and pHash. A check by hashes
    has only those it was given (the others empty)."""

    sha256: bytes
    pdq: bytes
    pdq_quality: int
    phash: bytes
    md5: bytes = b""


@dataclass(frozen=True)
class ViewHashes:
    """PDQ (and its quality) and pHash of one view, as it is shown (no turns or mirrors)."""

    pdq: bytes
    pdq_quality: int
    phash: bytes


@dataclass
class Fingerprint:
    """Hashes plus embeddings computed lazily, one per model asked for."""

    hashes: Hashes
    image: DecodedImage
    model_input: Image.Image
    """The picture at the embedding's input size; pHash is taken from it too."""
    pdq_variants: tuple[bytes, ...]
    """PDQ of the picture's eight rotations and mirrors: a turned re-upload still matches."""
    phash_variants: tuple[bytes, ...]
    """pHash of the same eight, in the same order: a turned copy's pHash is compared in the entry's orientation."""
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    """Per model: the whole picture's embedding (what an entry stores)."""
    views: dict[str, np.ndarray] = field(default_factory=dict)
    """Per model: the embeddings a check searches with, one row per view."""
    stage_seconds: list[tuple[str, float]] = field(default_factory=list)
    """Time spent per stage (decode, hash, embed, region), for metrics kept by the caller."""

    @cached_property
    def placed_regions(self) -> list[Placed]:
        """Pictures found inside the image, ready to embed, in batches of one size (`_region_views`), with
        their places. Looked for only when a check needs it, never for an add. Looked for on the draft
        (`DecodedImage.upright`), and cut from the picture decoded finer (`DecodedImage.shown`), only when
        something was found."""
        upright = self.image.upright
        found = find_regions(finder_picture(upright), upright.size)
        if not found:
            return []
        shown = self.image.shown
        width, height = self.image.shown_size
        return [
            [(picture, Place(PART, box).scaled(width / shown.width, height / shown.height)) for picture, box in batch]
            for batch in _region_views(
                found.scaled(shown.width / upright.width, shown.height / upright.height), shown, self.image.crops
            )
        ]

    @cached_property
    def placed_frames(self) -> list[Placed]:
        """An animation's later frames that show something else (`DecodedImage.numbered_frames`), ready to
        embed, in batches of one size, with their places. Looked for only when a check needs it: an entry is
        its first frame."""
        whole = (0, 0, *self.image.shown_size)
        batches: dict[tuple[int, int], Placed] = {}
        for number, frame in self.image.numbered_frames:
            picture = embedding_input(frame)
            batches.setdefault(picture.size, []).append((picture, Place(FRAME, whole, number)))
        return list(batches.values())

    @cached_property
    def check_views(self) -> list[Placed]:
        """Every view a check looks at beyond the whole picture, with its place: pictures inside it, then other
        frames."""
        with _timed(self.stage_seconds, "region"):
            regions = self.placed_regions
        with _timed(self.stage_seconds, "frames"):
            return regions + self.placed_frames

    @property
    def check_inputs(self) -> list[list[Image.Image]]:
        """`check_views` without their places, in batches of one size to embed."""
        return [[picture for picture, _ in batch] for batch in self.check_views]

    @property
    def places(self) -> tuple[Place, ...]:
        """Where each view a check searches with lies: the whole picture, then each of `check_views`."""
        whole = Place(WHOLE, (0, 0, *self.image.shown_size))
        return (whole, *(place for batch in self.check_views for _, place in batch))


def _region_views(regions: Regions, picture: Image.Image, cut: Cutter) -> list[list[tuple[Image.Image, Box]]]:
    """The views of what `regions` found in `picture` (each part cut by `cut`), each with its box in `picture`'s
    pixels: the picture framed by a flat canvas (a padded border, a plain screenshot) and one turned on a flat
    fill, set upright, at model input size, with what lies inside the latter (`_turned_views`); a picture on a
    screen photographed at an angle or pasted turned, rectified, at model input size; the cells of a collage;
    else up to MAX_REGION_VIEWS pictures framed by straight edges (pasted on a photo, inside an app's UI)."""
    batches: list[list[tuple[Image.Image, Box]]] = []
    if regions.canvas is not None:
        batches.append([(embedding_input(cut([regions.canvas], DRAFT_SHORT_SIDE)[0]), regions.canvas)])
    if regions.tilt is not None:
        upright = straightened(picture, regions.tilt)
        around = turned_box(picture)
        batches.append([(embedding_input(upright), around)])
        batches += [[(view, around) for view, _ in batch] for batch in _turned_views(upright)]
    if regions.cells:
        cells = _same_size(cut(regions.cells, CELL_SHORT_SIDE), CELL_SHORT_SIDE)
        batches.append(list(zip(cells, regions.cells, strict=True)))
    if regions.screen is not None:
        batches.append([(embedding_input(rectified(picture, regions.screen)), _around(regions.screen))])
    taken: list[Box] = [] if regions.canvas is None else [regions.canvas]
    framed: list[Box] = []
    for box in regions.frames:
        if len(taken) == MAX_REGION_VIEWS:
            break
        if all(overlap(box, other) < SAME_REGION for other in taken):
            taken.append(box)
            framed.append(box)
    for rank, (part, box) in enumerate(zip(cut(framed, DRAFT_SHORT_SIDE), framed, strict=True)):
        batches.append([(embedding_input(part) if rank == 0 else resized_to(part, FRAME_SHORT_SIDE), box)])
    return batches


def _around(corners: Quad) -> Box:
    """The upright box around a quadrilateral."""
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))


def _turned_views(upright: Image.Image) -> list[list[tuple[Image.Image, Box]]]:
    """The views of pictures inside a picture that was turned on a fill, once set upright: a composite
    turned as a whole turns the frames inside it too, which are only found straight (its turn is not
    looked for again)."""
    found = replace(find_regions(finder_picture(upright), upright.size), tilt=None)
    return _region_views(found, upright, lambda boxes, _: [upright.crop(box) for box in boxes]) if found else []


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
    thumbnail: bytes | None = None
    """A small WebP of the picture, when asked for (lists that keep thumbnails)."""
    phash_variants: tuple[bytes, ...] = ()
    """pHash of the picture's eight rotations and mirrors (`phash_variants`); empty for a check by hashes."""
    keypoints: bytes | None = None
    """The picture's keypoints as an entry keeps them (`server/keypoints.py`), when asked for."""
    view_hashes: tuple[ViewHashes, ...] = ()
    """The hashes of each view a check looks at beyond the whole picture (`Fingerprint.check_inputs`:
    pictures found inside it, an animation's other frames), when asked for: a copy inside another picture
    matches an entry's hashes as the copy alone would."""
    places: tuple[Place, ...] = ()
    """Where each view lies in the picture (`Fingerprint.places`): row i of `views` at places[i], view_hashes[i]
    at places[i + 1]; empty when neither views nor view_hashes were asked for."""


@dataclass(frozen=True)
class ModelInputs:
    """An image fingerprinted up to its embeddings, for models that run elsewhere (batched on a GPU)."""

    fingerprinted: Fingerprinted
    """Hashes and stages so far; no embeddings yet."""
    pictures: tuple[np.ndarray, ...]
    """uint8 HWC pictures the model embeds: the whole picture at its input size, then the pictures found inside
    it (looked for only when views are asked for); none when no model is."""
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
            done.thumbnail,
            done.phash_variants,
            done.keypoints,
            done.view_hashes,
            done.places,
        )


@contextmanager
def _timed(stages: list[tuple[str, float]], stage: str) -> Iterator[None]:
    """Note a stage's duration; metrics live in the server process, this may run in a worker."""
    started = time.perf_counter()
    try:
        yield
    finally:
        stages.append((stage, time.perf_counter() - started))


_ALTERNATING = np.array([(-1.0) ** frequency for frequency in range(8)])
"""Mirroring a picture flips the sign of its odd DCT frequencies along that axis."""


def phash_variants(rgb: Image.Image) -> tuple[bytes, ...]:
    """imagehash's 64-bit DCT hash, packed, of the picture and of its rotations and mirrors, in
    `hashes.pdq_dihedral`'s order. A turned picture's low frequencies are the picture's, transposed or
    with signs flipped, so the seven others come from the picture's own DCT, as imagehash takes it.
    Taken from the small model input: its 32×32 resize then costs a tenth, and the bits barely move."""
    grey = rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    low = scipy.fftpack.dct(scipy.fftpack.dct(np.asarray(grey), axis=0), axis=1)[:8, :8]
    rows, columns = _ALTERNATING[:, np.newaxis], _ALTERNATING[np.newaxis, :]
    turned = (
        low.T * rows,  # ROTATE_90
        low * rows * columns,  # ROTATE_180
        low.T * columns,  # ROTATE_270
        low * columns,  # FLIP_LEFT_RIGHT
        low * rows,  # FLIP_TOP_BOTTOM
        low.T,  # TRANSPOSE
        low.T * rows * columns,  # TRANSVERSE
    )
    itself = imagehash.phash(grey).hash  # 32×32 already: imagehash's own resize is a copy
    return tuple(np.packbits(bits.reshape(-1)).tobytes() for bits in (itself, *(b > np.median(b) for b in turned)))


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
            phashes = phash_variants(model_input)
            hashes = Hashes(
                sha256=hashlib.sha256(data).digest(),
                pdq=variants[0],
                pdq_quality=quality,
                phash=phashes[0],
                md5=hashlib.md5(data, usedforsecurity=False).digest(),  # shared lists carry MD5s
            )
        return Fingerprint(hashes, decoded, model_input, variants, phashes, stage_seconds=stages)

    def compute(
        self,
        data: bytes,
        embed: Sequence[str] = (),
        views: Sequence[str] = (),
        thumbnail: bool = False,
        keypoints: bool = False,
        view_hashes: bool = False,
    ) -> Fingerprinted:
        """Hashes, plus embeddings for the models in `embed`, check views for those in `views`, with
        `thumbnail` a small WebP of the picture, with `keypoints` the keypoints an entry keeps, and with
        `view_hashes` the PDQ and pHash of each view a check looks at beyond the whole picture."""
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
            self._thumbnail(fingerprint) if thumbnail else None,
            fingerprint.phash_variants,
            self._keypoints(fingerprint) if keypoints else None,
            self._view_hashes(fingerprint) if view_hashes else (),
            fingerprint.places if views or view_hashes else (),
        )

    @staticmethod
    def _view_hashes(fingerprint: Fingerprint) -> tuple[ViewHashes, ...]:
        pictures = [picture for batch in fingerprint.check_inputs for picture in batch]
        with _timed(fingerprint.stage_seconds, "hash"):
            return tuple(hashes_of_view(picture) for picture in pictures)

    @staticmethod
    def _thumbnail(fingerprint: Fingerprint) -> bytes:
        with _timed(fingerprint.stage_seconds, "thumbnail"):
            return thumbnail_webp(fingerprint.image.rgb)

    @staticmethod
    def _keypoints(fingerprint: Fingerprint) -> bytes:
        with _timed(fingerprint.stage_seconds, "keypoints"):
            return entry_keypoints(fingerprint.image.rgb)

    def query_keypoints(self, data: bytes) -> bytes:
        """A checked picture's keypoints (`server/keypoints.py`), asked only when its candidates need them."""
        return query_keypoints(decode_image(data, self.max_pixels).rgb)

    def model_inputs(
        self,
        data: bytes,
        embed: Sequence[str] = (),
        views: Sequence[str] = (),
        thumbnail: bool = False,
        keypoints: bool = False,
        view_hashes: bool = False,
    ) -> ModelInputs:
        """What `compute` does short of running the models: their input pictures instead."""
        fingerprint = self.fingerprint(data)
        pictures = [np.asarray(fingerprint.model_input, dtype=np.uint8)] if embed or views else []
        if views:
            batches = fingerprint.check_inputs
            pictures += [np.asarray(picture, dtype=np.uint8) for batch in batches for picture in batch]
        hashes_only = Fingerprinted(
            fingerprint.hashes,
            fingerprint.pdq_variants,
            {},
            {},
            tuple(fingerprint.stage_seconds),
            self._thumbnail(fingerprint) if thumbnail else None,
            fingerprint.phash_variants,
            self._keypoints(fingerprint) if keypoints else None,
            self._view_hashes(fingerprint) if view_hashes else (),
            fingerprint.places if views or view_hashes else (),
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
        """The embeddings a check searches with: the whole picture, the pictures found inside it, then an
        animation's other frames."""
        views = fingerprint.views.get(model)
        if views is None:
            rows = [self.embedding(fingerprint, model)[np.newaxis]]
            batches = fingerprint.check_inputs
            if batches:
                with _timed(fingerprint.stage_seconds, "embed"):
                    rows += [self.embedders.get(model).embed_many(batch) for batch in batches]
            views = fingerprint.views[model] = np.concatenate(rows)
        return views


def hashes_of_view(picture: Image.Image) -> ViewHashes:
    """A view's PDQ and pHash, each of the view as it is."""
    variants, quality = pdq_hashes(picture)
    return ViewHashes(variants[0], quality, phash_variants(picture)[0])


def _same_size(pictures: Sequence[Image.Image], short_side: int) -> list[Image.Image]:
    """Pictures of about one size (a grid's cells) resized to exactly one, so they embed as a batch."""
    width, height = resized_to(pictures[0], short_side).size
    return [picture.resize((width, height), Image.Resampling.BILINEAR) for picture in pictures]

"""server.pdq against the reference hashing core (pdqhash wraps ThreatExchange's pdq/cpp): bit for bit on
pictures of the size given, all eight rotations and mirrors and the quality; within a few bits of the whole
file when computed from a picture decoded at a fraction of it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pdqhash
import pytest
from PIL import Image

from lookalike.server.pdq import pdq_hashes
from tests.conftest import corpus_photos, distinct_photos


def reference(picture: Image.Image) -> tuple[tuple[bytes, ...], int]:
    """pdqhash's eight hashes (packed as ours) and quality."""
    variants, quality = pdqhash.compute_dihedral(np.ascontiguousarray(np.asarray(picture.convert("RGB"))))
    return tuple(np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes() for bits in variants), int(quality)


def bits_apart(first: bytes, second: bytes) -> int:
    return int(np.bitwise_count(np.frombuffer(first, np.uint8) ^ np.frombuffer(second, np.uint8)).sum())


def worst_of_eight(ours: tuple[bytes, ...], theirs: tuple[bytes, ...]) -> int:
    return max(bits_apart(a, b) for a, b in zip(ours, theirs, strict=True))


def photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    "size", [(64, 64), (5, 5), (7, 300), (129, 65), (1000, 37), (640, 427)], ids=lambda size: "×".join(map(str, size))
)
def test_noise_of_any_size_hashes_as_the_reference_core(size: tuple[int, int]) -> None:
    picture = noise(*size, seed=sum(size))
    assert pdq_hashes(picture) == reference(picture)


def test_photos_hash_as_the_reference_core_bit_for_bit() -> None:
    """Every variant and the quality equal, for corpus photos of many sizes."""
    for path in distinct_photos(24, seed=5):
        picture = photo(path)
        assert pdq_hashes(picture) == reference(picture), path.name


def test_a_flat_picture_has_quality_0_as_in_the_reference() -> None:
    """(Its bits are rounding noise, in the reference as here.)"""
    flat = Image.new("RGB", (300, 200), (90, 90, 90))
    assert pdq_hashes(flat)[1] == reference(flat)[1] == 0


def test_pictures_smaller_than_the_reference_hashes_get_no_bits() -> None:
    assert pdq_hashes(noise(4, 300, seed=1)) == ((bytes(32),) * 8, 0) == reference(noise(4, 300, seed=1))


def drafted(data: bytes, scale: int) -> Image.Image:
    """The JPEG decoded at 1/`scale` by DCT scaling, as the server's draft decoding does."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        image.draft("RGB", (width // scale, height // scale))
        assert image.size == (-(-width // scale), -(-height // scale))
        return image.convert("RGB")


def test_a_draft_hashes_within_a_few_bits_of_the_whole_file() -> None:
    """Corpus JPEGs decoded at a half (short side ≥ 576: the server drafts them so) and PNG-like pictures reduced
    by 2 × 2 blocks hash within a few bits of the reference on the whole file; hashed as if they were the file,
    the textures among them land much further away."""
    large = [path for path in corpus_photos() if min(size_of(path)) >= 576][:40]
    assert len(large) >= 30
    folded: list[int] = []
    as_if_whole: list[int] = []
    for path in large:
        data = path.read_bytes()
        whole = photo(path)
        theirs = reference(whole)[0]
        for small in (drafted(data, 2), whole.reduce(2)):
            folded.append(worst_of_eight(pdq_hashes(small, whole.size)[0], theirs))
            as_if_whole.append(worst_of_eight(pdq_hashes(small)[0], theirs))
    assert max(folded) <= 6 and np.mean(folded) <= 2, folded
    assert max(as_if_whole) > 8, as_if_whole

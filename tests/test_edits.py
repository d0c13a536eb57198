"""benchmarks.edits: every family is seeded and yields an RGB picture; composites hold the picture."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from benchmarks.edits import FAMILIES, apply_edit, encode_edited, region_of, rotate_large


def picture() -> Image.Image:
    """A textured test picture (noise on a gradient), so crops and pastes differ."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 320, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 25, (240, 320, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_seeded_and_gives_rgb(family: str) -> None:
    first = apply_edit(family, picture(), random.Random(f"7:{family}"))
    again = apply_edit(family, picture(), random.Random(f"7:{family}"))
    assert first.mode == "RGB" and min(first.size) >= 16
    assert encode_edited(first) == encode_edited(again)


@pytest.mark.parametrize("family", ["paste_on_photo", "collage_2x2", "collage_3x3"])
def test_composites_take_their_other_photos_from_the_picker(family: str) -> None:
    asked: list[int] = []

    def others(rng: random.Random) -> Image.Image:
        asked.append(1)
        return Image.new("RGB", (400, 300), (rng.randrange(256), 90, 40))

    apply_edit(family, picture(), random.Random(3), others)
    assert asked


def backdrop(rng: random.Random) -> Image.Image:
    """A plain photo for a picture to be pasted on."""
    return Image.new("RGB", (1000, 700), (rng.randrange(256), 90, 40))


def test_a_picture_pasted_at_the_edge_reaches_the_photos_edge() -> None:
    for seed in range(12):
        edited = apply_edit("paste_at_edge", picture(), random.Random(seed), backdrop)
        box = region_of(edited)
        assert box is not None and (box[0] == 0 or box[1] == 0 or box[2] == edited.width or box[3] == edited.height)


def test_a_small_paste_spans_a_fifth_to_three_tenths_of_the_photo() -> None:
    for seed in range(12):
        edited = apply_edit("paste_small", picture(), random.Random(seed), backdrop)
        box = region_of(edited)
        assert box is not None
        span = max((box[2] - box[0]) / edited.width, (box[3] - box[1]) / edited.height)
        assert 0.19 <= span <= 0.33, span  # a print's white border adds up to 8 %


def test_a_large_rotation_cropped_inside_keeps_no_corner_fill() -> None:
    white = Image.new("RGB", (400, 300), (255, 255, 255))
    for seed in range(12):
        rng = random.Random(seed)
        turned = rotate_large(white, rng)
        pixels = np.asarray(turned)
        if pixels.min() >= 200:  # the cropped kind: nothing but the picture
            assert turned.size != white.size
            return
    pytest.fail("no seed gave the cropped kind")


def test_unknown_family_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown edit family"):
        apply_edit("nope", picture(), random.Random(0))

"""PDQ as ThreatExchange's reference computes it (the pdq/cpp hashing core, which pdqhash wraps), taken from
a picture decoded smaller than its file.

The reference turns the picture to luma, blurs it with two passes of a box filter along each axis (the
Jarosz filter, its window the side over 128, rounded up), keeps 64 × 64 samples, takes the 16 × 16 lowest
DCT frequencies but the constant, and sets each bit whose coefficient exceeds their median. Blur and
sampling are linear: along each axis, every sample is a fixed weighting of that axis's pixels, computed
here once per size (`_weights`) and applied to the luma as two small products; on pictures of the size
given, the bits and the quality are the reference's.

A picture decoded at 1/2, 1/4 or 1/8 of its file's size (a JPEG draft, a PNG reduced by blocks) holds
averages of blocks of the file's pixels. Its weights are the file's, each block's added up, so the samples
are those the reference takes from the whole file, but for the detail inside each block: on the dev corpus,
JPEGs drafted to a short side of 288 to 575 hash within 0.24 bits of pdqhash on the whole file on average
and 6 at most, where hashing the draft as if it were the file moved them by 2.3 and up to 38 (the reference's
filter lets through fine detail, textures above all, that aliases into its samples).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

SAMPLES = 64
"""The reference blurs and samples the luma down to SAMPLES × SAMPLES."""
MIN_SIDE = 5
"""The reference hashes nothing smaller (all bits 0, quality 0)."""
_FREQUENCIES = 16
_DCT = (
    math.sqrt(2.0 / SAMPLES)
    * np.cos(math.pi / 2 / SAMPLES * np.arange(1, _FREQUENCIES + 1)[:, None] * (2 * np.arange(SAMPLES) + 1))
).astype(np.float32)
"""Rows: DCT frequencies 1 to 16 (the constant left out) over SAMPLES points."""
_EVEN = np.where(np.arange(_FREQUENCIES) % 2 == 1, 1, -1).astype(np.float32)
"""Index i holds frequency i + 1: the odd frequencies change sign when the picture is mirrored."""
_BOTH = np.outer(_EVEN, _EVEN)


@lru_cache(maxsize=1024)
def _weights(decoded: int, full: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of `full` pixels decoded as `decoded`: for each of the SAMPLES samples, the pixels it
    reads (SAMPLES × span indices) and their weights (float32, zero where a band is shorter than the span)."""
    window = (full + 2 * SAMPLES - 1) // (2 * SAMPLES)
    ahead = (window + 2) // 2 - 1  # a box at pixel k averages k - behind … k + ahead, clipped to the picture
    behind = window - 1 - ahead
    pixel = np.arange(full)
    low, high = np.maximum(0, pixel - behind), np.minimum(full - 1, pixel + ahead)
    count = (high - low + 1).astype(np.float64)
    centres = ((np.arange(SAMPLES) + 0.5) * full / SAMPLES).astype(np.int64)
    # First pass: the pixels each sample's box averages; second pass: each of those pixels' own box.
    first = low[centres][:, None] + np.arange(window)
    first_weight = (first <= high[centres][:, None]) / count[centres][:, None]
    first = np.minimum(first, full - 1)
    start = low[low[centres]]
    span = 2 * window - 1
    read = start[:, None] + np.arange(span)
    covered = (low[first][:, :, None] <= read[:, None, :]) & (read[:, None, :] <= high[first][:, :, None])
    weight = (first_weight[:, :, None] * covered / count[first][:, :, None]).sum(axis=1)
    # Each decoded pixel holds a block of `factor` file pixels: it takes their weights, added up.
    factor = max(1, round(full / decoded))
    target = np.minimum(read // factor, decoded - 1)
    offset = target[:, :1]
    folded = np.zeros((SAMPLES, span // factor + 2))
    np.add.at(folded, (np.arange(SAMPLES)[:, None], target - offset), weight)
    pixels = np.minimum(offset + np.arange(folded.shape[1]), decoded - 1)
    return pixels, folded.astype(np.float32)


def _samples(luma: np.ndarray, full_size: tuple[int, int]) -> np.ndarray:
    """The reference's SAMPLES × SAMPLES blurred samples of the file, from its luma decoded as `luma`."""
    height, width = luma.shape
    columns, column_weights = _weights(width, full_size[0])
    rows, row_weights = _weights(height, full_size[1])
    across = np.einsum("hsk,sk->hs", luma[:, columns], column_weights)
    sampled: np.ndarray = np.einsum("tks,tk->ts", across[rows], row_weights)
    return sampled


def _quality(samples: np.ndarray) -> int:
    """The reference's 0–100 quality: the sum of its samples' steps, each truncated to whole percents of 255."""
    down = np.trunc((samples[:-1] - samples[1:]) * np.float32(100) / np.float32(255))
    across = np.trunc((samples[:, :-1] - samples[:, 1:]) * np.float32(100) / np.float32(255))
    return min(100, int(np.abs(down).sum() + np.abs(across).sum()) // 90)


def pdq_hashes(rgb: Image.Image, full_size: tuple[int, int] | None = None) -> tuple[tuple[bytes, ...], int]:
    """PDQ's 256 bits (packed, bit 255 first, as ThreatExchange prints them) of the picture and of its seven
    rotations and mirrors, in PDQ's dihedral order (the picture itself first), and the quality (0–100).
    `full_size`: the (width, height) of the file `rgb` was decoded from at 1/2, 1/4 or 1/8 (none: `rgb`'s own)."""
    full_size = full_size or rgb.size
    if min(full_size) < MIN_SIDE:
        return (bytes(32),) * 8, 0
    samples = _samples(np.asarray(rgb.convert("F")), full_size)  # Pillow's F is the reference's luma
    coefficients = _DCT @ samples @ _DCT.T
    variants = np.stack(
        [
            coefficients,
            (coefficients * _EVEN[None, :]).T,  # turned 90°
            coefficients * _BOTH,  # 180°
            (coefficients * _EVEN[:, None]).T,  # 270°
            coefficients * _EVEN[:, None],  # mirrored top to bottom
            coefficients * _EVEN[None, :],  # left to right
            coefficients.T,  # about the main diagonal
            (coefficients * _BOTH).T,  # about the other
        ]
    ).reshape(8, -1)
    median = np.sort(variants, axis=1)[:, 127:128]  # the reference's Torben median: the lower middle of 256
    bits = (variants > median).astype(np.uint8)[:, ::-1]
    return tuple(np.packbits(row).tobytes() for row in bits), _quality(samples)

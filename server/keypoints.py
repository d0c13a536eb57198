"""Local features that confirm a copy the embedding is unsure of (issue #18).

A heavy crop, a picture pasted small into another, a photo of a screen: the embedding of the whole query then
lands below the review level although the listed picture's own pixels are there. ORB keypoints find them: each
entry keeps its picture's keypoints (`entry_keypoints`, about 17 KiB); a check whose candidates all fall short of
review computes the query's (`query_keypoints`) and asks, for its best few candidates, whether many keypoints
agree under one similarity transform (`agreeing_keypoints`). Only the pixels of one picture do that; other
shots of a scene may too, so agreement sends a match to review and never rejects it (`server/scoring.py`).

The thresholds come from whole-set numbers of `benchmarks/accuracy.py` (docs/tuning.md, Matching: "Keypoints
confirm an unsure candidate").
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
from PIL import Image

ENTRY_SIDE = 320
"""An entry's keypoints are found on its grey picture at this long side."""
QUERY_SIDE = 512
"""A query's at this one: more pixels, so a copy pasted small or cropped hard still shows its keypoints at
ORB's scales (eight levels of 1.2 span 3.6×)."""
ENTRY_FEATURES = 500
QUERY_FEATURES = 1500
RATIO = 0.8
"""A query keypoint's nearest entry descriptor must beat its second nearest by this ratio (Lowe's test)."""
REPROJECTION = 3.0
"""RANSAC's inlier distance, in entry pixels."""
MIN_AGREEING = 15
"""Keypoints agreeing under one transform that confirm a copy: the benchmark's unrelated queries reached 8 at
most (seed 1; 7 on seed 0), while 151 of the 196 copies the embedding missed whose entry was among the
candidates reached it."""
MIN_SPREAD = 0.02
"""The agreeing keypoints' bounding box must cover this share of the entry picture (not a logo's corner)."""
SCALES = (0.1, 8.0)
"""Plausible scales from query to entry pixels; outside, the transform is degenerate."""

_HEADER = struct.Struct("<BH")
_VERSION = 1
_FIXED = 8
"""Positions are stored in 1/8 pixel as unsigned 16-bit integers."""
_DESCRIPTOR = 32

cv2.setNumThreads(1)  # parallelism comes from independent workers and requests, one thread each


def _orb(features: int) -> cv2.ORB:
    return cv2.ORB.create(nfeatures=features, edgeThreshold=15, patchSize=15, fastThreshold=10)


def _grey(picture: Image.Image, side: int) -> np.ndarray:
    grey = picture.convert("L")
    grey.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(grey)


def _encode(points: np.ndarray, descriptors: np.ndarray) -> bytes:
    fixed = np.clip(np.round(points * _FIXED), 0, 65535).astype("<u2")
    return _HEADER.pack(_VERSION, len(points)) + fixed.tobytes() + descriptors.astype(np.uint8).tobytes()


def decode(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """(points float32 N×2, descriptors uint8 N×32) from `_encode`'s bytes; None for bytes it did not write."""
    if len(data) < _HEADER.size:
        return None
    version, count = _HEADER.unpack_from(data)
    if version != _VERSION or len(data) != _HEADER.size + count * (4 + _DESCRIPTOR):
        return None
    body = memoryview(data)[_HEADER.size :]
    points = np.frombuffer(body[: count * 4], dtype="<u2").reshape(count, 2).astype(np.float32) / _FIXED
    descriptors = np.frombuffer(body[count * 4 :], dtype=np.uint8).reshape(count, _DESCRIPTOR)
    return points, descriptors


def _keypoints(picture: Image.Image, side: int, features: int) -> bytes:
    found, descriptors = _orb(features).detectAndCompute(_grey(picture, side), None)
    if descriptors is None:
        return _encode(np.zeros((0, 2), np.float32), np.zeros((0, _DESCRIPTOR), np.uint8))
    return _encode(np.array([point.pt for point in found], dtype=np.float32), descriptors)


def entry_keypoints(picture: Image.Image) -> bytes:
    """What an entry keeps: its picture's ORB keypoints at ENTRY_SIDE."""
    return _keypoints(picture, ENTRY_SIDE, ENTRY_FEATURES)


def query_keypoints(picture: Image.Image) -> bytes:
    """A checked picture's ORB keypoints at QUERY_SIDE."""
    return _keypoints(picture, QUERY_SIDE, QUERY_FEATURES)


def agreeing_keypoints(query: bytes, entry: bytes) -> int:
    """How many of the query's keypoints land on the entry's under one similarity transform (RANSAC); 0 when
    fewer than MIN_AGREEING do, the transform is implausible, or they cluster in a corner of the entry."""
    found_query, found_entry = decode(query), decode(entry)
    if found_query is None or found_entry is None:
        return 0
    (query_points, query_descriptors), (entry_points, entry_descriptors) = found_query, found_entry
    if len(query_points) < 2 or len(entry_points) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query_descriptors, entry_descriptors, k=2)
    good = [pair[0] for pair in pairs if len(pair) == 2 and pair[0].distance < RATIO * pair[1].distance]
    if len(good) < MIN_AGREEING:
        return 0
    source = query_points[[match.queryIdx for match in good]]
    target = entry_points[[match.trainIdx for match in good]]
    model, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION)
    if model is None or mask is None:
        return 0
    scale = float(np.hypot(model[0, 0], model[1, 0]))
    agreeing = target[mask.ravel().astype(bool)]
    if not SCALES[0] <= scale <= SCALES[1] or len(agreeing) < MIN_AGREEING:
        return 0
    spread = float(np.ptp(agreeing[:, 0]) * np.ptp(agreeing[:, 1])) / (ENTRY_SIDE * ENTRY_SIDE)
    return len(agreeing) if spread >= MIN_SPREAD else 0

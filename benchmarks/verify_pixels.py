"""Measurement (issue #18): can pixels after registration tell a copy from another shot of its scene?

For the matches an accuracy run sent to review (`benchmarks.accuracy --details`), this registers
the query onto the entry's small grey thumbnail (ORB keypoints, a RANSAC homography), warps it
into the entry's frame and measures, per block of the overlap:

- ``still``: the share of textured blocks that agree in place (NCC of intensities, so brightness
  and contrast changes do not count) — a copy's own pixels, minus its overlays;
- ``moved``: blocks that agree only when shifted by 2–3 px — the parallax or motion of another shot.

It prints the statistics per group (true copies in review by edit family, other shots of a listed
scene, unrelated negatives), and for the rule "still ≥ t and no moved block", how many review-band
copies it would reject and how many other shots it would also reject. Needs OpenCV
(`pip install opencv-python-headless`), which the server does not depend on.

    .venv/bin/python -m benchmarks.accuracy --seed 1 --details --models sscd-distilled --out /tmp/s1
    .venv/bin/python -m benchmarks.verify_pixels /tmp/s1/accuracy_details.json --seed 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.accuracy import (
    DEFAULT_CORPUS,
    NEGATIVE,
    ORIGINAL,
    POSITIVE,
    SCENE,
    OtherPhotos,
    Query,
    edited_bytes,
    split_corpus,
)

THUMBNAIL_SIDE = 256
"""The entry's grey thumbnail, long side: what a server would store per entry."""
QUERY_SIDE = 512
"""The query is registered at this long side (more keypoints than the thumbnail; the scale is free)."""
BLOCK = 16
"""Block side in thumbnail pixels: 16 × 12 blocks on a 4:3 picture."""
SHIFT = 3
"""Blocks are also compared shifted by up to this many pixels, to see local motion."""
TEXTURED = 6.0
"""Blocks flatter than this (grey-level standard deviation) say nothing and are skipped."""
AGREE = 0.8
"""Block NCC at which a block agrees."""
MIN_MATCHES = 8


@dataclass(frozen=True)
class Agreement:
    inliers: int
    still: float  # share of textured overlap blocks agreeing in place
    moved: int  # blocks agreeing only when shifted by 2-3 px
    blocks: int  # textured blocks in the overlap
    milliseconds: float


def grey_thumbnail(picture: Image.Image, side: int) -> np.ndarray:
    grey = picture.convert("L")
    grey.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(grey)


def thumbnail_bytes(thumbnail: np.ndarray) -> int:
    """What storing the thumbnail costs, as a grey JPEG of quality 90."""
    out = io.BytesIO()
    Image.fromarray(thumbnail).save(out, format="JPEG", quality=90)
    return len(out.getvalue())


class Verifier:
    """Registration and block agreement; OpenCV is imported only here."""

    def __init__(self) -> None:
        import cv2  # optional: only this measurement needs OpenCV

        cv2.setNumThreads(1)  # CPU per candidate on one thread, as a server worker would spend it
        self.cv2 = cv2
        self.entry_orb = cv2.ORB.create(nfeatures=1000, edgeThreshold=15, patchSize=15, fastThreshold=10)
        self.query_orb = cv2.ORB.create(nfeatures=1500, edgeThreshold=15, patchSize=15, fastThreshold=10)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def agreement(self, entry: np.ndarray, query: np.ndarray) -> Agreement | None:
        """The query's agreement with the entry thumbnail, or None when it cannot be registered."""
        cv2 = self.cv2
        started = time.process_time()
        entry_points, entry_descriptors = self.entry_orb.detectAndCompute(entry, None)
        query_points, query_descriptors = self.query_orb.detectAndCompute(query, None)
        if entry_descriptors is None or query_descriptors is None:
            return None
        pairs = self.matcher.knnMatch(query_descriptors, entry_descriptors, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.85 * p[1].distance]
        if len(good) < MIN_MATCHES:
            return None
        source = np.array([query_points[m.queryIdx].pt for m in good], dtype=np.float32)
        target = np.array([entry_points[m.trainIdx].pt for m in good], dtype=np.float32)
        homography, inlier_mask = cv2.findHomography(source, target, cv2.USAC_MAGSAC, 2.0)
        if homography is None:
            return None
        height, width = entry.shape
        warped = cv2.warpPerspective(query, homography, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)
        inside = cv2.warpPerspective(np.full(query.shape, 255, np.uint8), homography, (width, height)) > 0
        still, moved, blocks = block_agreement(entry.astype(np.float32), warped, inside)
        return Agreement(
            inliers=int(inlier_mask.sum()),
            still=still,
            moved=moved,
            blocks=blocks,
            milliseconds=1000.0 * (time.process_time() - started),
        )


def _blocks(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """(rows·columns, BLOCK²) zero-mean, unit-norm block vectors."""
    grid = image[: rows * BLOCK, : columns * BLOCK].reshape(rows, BLOCK, columns, BLOCK).swapaxes(1, 2)
    tiles = grid.reshape(rows * columns, BLOCK * BLOCK)
    tiles = tiles - tiles.mean(axis=1, keepdims=True)
    normalised: np.ndarray = tiles / (np.linalg.norm(tiles, axis=1, keepdims=True) + 1e-6)
    return normalised


def block_agreement(entry: np.ndarray, warped: np.ndarray, inside: np.ndarray) -> tuple[float, int, int]:
    """(share of textured overlap blocks agreeing in place, blocks agreeing only shifted, textured blocks)."""
    height, width = entry.shape
    rows, columns = (height - 2 * SHIFT) // BLOCK, (width - 2 * SHIFT) // BLOCK
    core = (slice(SHIFT, SHIFT + rows * BLOCK), slice(SHIFT, SHIFT + columns * BLOCK))
    covered = (
        np.lib.stride_tricks.sliding_window_view(inside, (BLOCK + 2 * SHIFT, BLOCK + 2 * SHIFT))[::BLOCK, ::BLOCK]
        .all(axis=(2, 3))[:rows, :columns]
        .ravel()
    )
    entry_tiles = entry[core].reshape(rows, BLOCK, columns, BLOCK).swapaxes(1, 2).reshape(rows * columns, -1)
    textured = covered & (entry_tiles.std(axis=1) >= TEXTURED)
    reference = _blocks(entry[core], rows, columns)
    in_place = np.zeros(rows * columns)
    shifted = np.full(rows * columns, -1.0)
    for dy in range(-SHIFT, SHIFT + 1):
        for dx in range(-SHIFT, SHIFT + 1):
            window = warped[SHIFT + dy : SHIFT + dy + rows * BLOCK, SHIFT + dx : SHIFT + dx + columns * BLOCK]
            ncc = (reference * _blocks(window, rows, columns)).sum(axis=1)
            if dy == 0 and dx == 0:
                in_place = ncc
            elif max(abs(dy), abs(dx)) >= 2:
                shifted = np.maximum(shifted, ncc)
    agrees = in_place >= AGREE
    moved = ~agrees & (shifted >= AGREE) & (shifted - in_place >= 0.15)
    blocks = int(textured.sum())
    return (float(agrees[textured].mean()) if blocks else 0.0), int(moved[textured].sum()), blocks


def review_candidates(details: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(query record, match) for every match sent to review: a true copy's match of its own original,
    and every reviewed match of a negative or of another shot of a listed scene."""
    chosen = []
    for record in details:
        for match in record["matches"]:
            if match["decision"] != "review":
                continue
            if record["kind"] == POSITIVE and match["id"] != record["truth"]:
                continue
            chosen.append((record, match))
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("details", type=Path, help="accuracy_details.json of a --details run")
    parser.add_argument("--seed", type=int, required=True, help="the seed of that run")
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--listed-share", type=float, default=0.6)
    parser.add_argument("--out", type=Path, help="write every candidate's statistics here (JSON)")
    args = parser.parse_args(argv)

    photos = sorted(args.corpus.glob("*.jpg")) + sorted(args.corpus.glob("*.png"))
    split = split_corpus(photos, args.seed, args.listed_share)
    others = OtherPhotos(split.distractors)
    try:
        verifier = Verifier()
    except ImportError:
        print("this measurement needs OpenCV: .venv/bin/pip install opencv-python-headless", file=sys.stderr)
        return 2
    candidates = review_candidates(json.loads(args.details.read_text()))
    thumbnails: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for record, match in candidates:
        source, family = record["query"].rsplit(":", 1)
        path = args.corpus / source
        query = Query(record["query"], path, family, record["kind"])
        with Image.open(path) as image:
            data = (
                path.read_bytes()
                if family == ORIGINAL
                else edited_bytes(query, image.convert("RGB"), args.seed, others)
            )
        with Image.open(io.BytesIO(data)) as image:
            query_grey = grey_thumbnail(image, QUERY_SIDE)
        if match["id"] not in thumbnails:
            with Image.open(args.corpus / match["id"]) as image:
                thumbnails[match["id"]] = grey_thumbnail(image, THUMBNAIL_SIDE)
        found = verifier.agreement(thumbnails[match["id"]], query_grey)
        row = {"query": record["query"], "kind": record["kind"], "family": family, "entry": match["id"]}
        row.update({"cosine": match["cosine"], "pdq": match["pdq"], "phash": match["phash"]})
        if found is not None:
            row.update(found.__dict__)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    print(report(rows, [thumbnail_bytes(t) for t in thumbnails.values()]))
    return 0


def report(rows: Sequence[dict[str, Any]], stored: Sequence[int]) -> str:
    """Statistics per group, the closest other shot, and what a rule at its level would reject."""
    lines = [
        f"{len(rows)} reviewed matches; entry thumbnail {THUMBNAIL_SIDE} px grey JPEG q90: "
        f"mean {np.mean(stored):.0f} bytes, max {max(stored)}"
    ]
    timed = [row["milliseconds"] for row in rows if "milliseconds" in row]
    lines.append(
        f"registration + blocks per candidate, CPU on one thread: mean {np.mean(timed):.1f} ms, "
        f"p99 {np.percentile(timed, 99):.1f} ms"
    )
    copies = [row for row in rows if row["kind"] == POSITIVE]
    shots = [row for row in rows if row["kind"] == SCENE]
    unrelated = [row for row in rows if row["kind"] == NEGATIVE]

    def passes(row: dict[str, Any], threshold: float) -> bool:
        return "still" in row and row["moved"] == 0 and row["still"] >= threshold

    closest = max((row["still"] for row in shots if "still" in row and row["moved"] == 0), default=0.0)
    lines.append(f"closest other shot without moved blocks: still {closest:.3f}")
    for row in sorted(shots, key=lambda r: -r.get("still", 0.0))[:8]:
        lines.append(f"  {row['query']} ~ {row['entry']}: still {row.get('still', 0):.3f} moved {row.get('moved')}")
    for threshold in (0.8, 0.9, 0.95, closest + 1e-9):
        bound = f"≥ {threshold:.3f}" if threshold < closest else f"> {closest:.3f}"
        lines.append(
            f"rule still {bound}, no moved block: copies in review turned to reject "
            f"{sum(passes(r, threshold) for r in copies)} of {len(copies)}; other shots "
            f"{sum(passes(r, threshold) for r in shots)} of {len(shots)}; unrelated "
            f"{sum(passes(r, threshold) for r in unrelated)} of {len(unrelated)}"
        )
    families = sorted({row["family"] for row in copies})
    lines.append("per family (copies in review): count, median still, share passing at the closest other shot")
    for family in families:
        group = [row for row in copies if row["family"] == family]
        still = [row.get("still", 0.0) for row in group]
        lines.append(
            f"  {family:16s} {len(group):4d} {np.median(still):.3f} "
            f"{np.mean([passes(r, closest + 1e-9) for r in group]):.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

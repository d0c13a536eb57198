"""How often an unrelated check compares keypoints, as a list grows.

A check compares keypoints (`server/keypoints.py`) when a candidate lands at cosine KEYPOINT_COSINE or more
without reaching review. The best cosine an unrelated picture reaches rises with the number of entries, so
that share rises too, and with it the CPU of an average check. This measures it with the real model:
entries are the embeddings of the listed photos of the accuracy benchmark's split, then of their tiles
(2×2, 3×3, ... each tile one more entry: real picture content, though a photo's tiles are not independent
of each other), and queries are the distractors and a few plain edits of them, as a check embeds them (the
whole picture only: region views, which can only add candidates, are left out, so the shares are a floor).

    .venv/bin/python -m benchmarks.unsure_share [--seed 0] [--tiles 4] [--max-photos 0]   # whole corpus: ~5 min

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.accuracy import DEFAULT_CORPUS, NEGATIVE, OtherPhotos, hardware, make_queries, render, split_corpus
from benchmarks.metrics import format_table
from lookalike.server.config import ServerConfig
from lookalike.server.embedder import Embedder, embedding_input
from lookalike.server.imaging import decode_image
from lookalike.server.service import KEYPOINT_COSINE

MODEL = "sscd-distilled"
QUERY_FAMILIES = ("resize_jpeg", "crop_30", "colour_jitter", "text_caption", "rotate_small")
"""Plain edits of each distractor, besides the distractor itself: more unrelated queries of the kind uploads are."""
LOWER_FLOOR = 0.25
"""A lower candidate floor, for comparison (docs/tuning.md: tried and not kept)."""


def tiles(picture: Image.Image, across: int) -> list[Image.Image]:
    """The picture cut into across × across tiles."""
    width, height = picture.size
    return [
        picture.crop((i * width // across, j * height // across, (i + 1) * width // across, (j + 1) * height // across))
        for i in range(across)
        for j in range(across)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--seed", type=int, default=0, help="the accuracy benchmark's split seed")
    parser.add_argument("--tiles", type=int, default=4, help="tile the listed photos up to N × N")
    parser.add_argument("--max-photos", type=int, default=0, help="the first N photos only (0: all)")
    args = parser.parse_args(argv)
    photos = (sorted(args.corpus.glob("*.jpg")) + sorted(args.corpus.glob("*.png")))[: args.max_photos or None]
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    split = split_corpus(photos, args.seed, 0.6)
    embedder = Embedder(MODEL)
    max_pixels = ServerConfig().max_pixels

    def embedded(picture: Image.Image) -> np.ndarray:
        return embedder.embed(embedding_input(picture))

    listed = [decode_image(path.read_bytes(), max_pixels).upright for path in split.listed]
    queries = make_queries(split.distractors, NEGATIVE, QUERY_FAMILIES)
    found = [
        embedded(decode_image(data, max_pixels).rgb)
        for data in render(queries, args.seed, OtherPhotos(split.distractors))
    ]
    query_rows = np.stack(found)
    entries: list[np.ndarray] = []
    rows = []
    for across in range(1, args.tiles + 1):
        entries += [embedded(tile) for picture in listed for tile in tiles(picture, across)]
        best = (query_rows @ np.stack(entries).T).max(axis=1)
        rows.append(
            {
                "entries": len(entries),
                "tiled up to": across,
                f"share >= {KEYPOINT_COSINE:.2f}": float(np.mean(best >= KEYPOINT_COSINE)),
                f"share >= {LOWER_FLOOR:.2f}": float(np.mean(best >= LOWER_FLOOR)),
                "median best cosine": float(np.median(best)),
            }
        )
    print(
        f"unrelated checks with a candidate at the keypoint floor: {len(query_rows)} queries, {MODEL}, "
        f"seed {args.seed}, {len(listed)} listed photos and their tiles\n"
    )
    print(format_table(rows, list(rows[0])))
    print(json.dumps({"hardware": hardware(), "seed": args.seed, "queries": len(query_rows), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

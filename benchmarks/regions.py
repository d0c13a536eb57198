"""The region finders side by side: today's `find_regions` against another commit's, on the same pictures.

Loads `server/regions.py` as it was at `--against` (from git) beside today's, and runs both on each
picture in turn, the order alternated picture by picture and pass by pass so load hits both arms
alike: `finder_picture` + `find_regions`, as a check runs them, timed by the thread's CPU clock. The
pictures are the plain corpus photos and, with `--families`, the accuracy benchmark's edits of them
(its split and edits of `--seed`). Reports each arm's mean and p50 and how many pictures got different
regions (boxes, tilt, cells, frames, screen corners): a speed-up that keeps the regions cannot move
the accuracy figures.

    .venv/bin/python -m benchmarks.regions --against 43a333f [--passes 3] [--families paste_on_photo,...]

Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

import lookalike.server.regions as today
from benchmarks.accuracy import (
    DEFAULT_CORPUS,
    NEGATIVE,
    POSITIVE,
    ROOT,
    OtherPhotos,
    hardware,
    make_queries,
    render,
    split_corpus,
)
from benchmarks.metrics import format_table
from lookalike.index import configure_threads
from lookalike.server.config import ServerConfig
from lookalike.server.imaging import decode_image


def regions_at(commit: str) -> ModuleType:
    """`server/regions.py` as it was at `commit`, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{commit}:server/regions.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "regions_before.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("regions_before", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def pictures(photos: Sequence[Path], families: Sequence[str], seed: int) -> Iterator[tuple[str, Image.Image]]:
    """(name, the picture a check shows the finders): each plain photo, then each edit asked for."""
    max_pixels = ServerConfig().max_pixels
    for photo in photos:
        yield photo.name, decode_image(photo.read_bytes(), max_pixels).upright
    if families:
        split = split_corpus(photos, seed, 0.6)
        queries = make_queries(split.listed, POSITIVE, families) + make_queries(split.distractors, NEGATIVE, families)
        queries = [query for query in queries if query.family in families]
        for query, data in zip(queries, render(queries, seed, OtherPhotos(split.distractors)), strict=True):
            yield query.id, decode_image(data, max_pixels).upright


def regions_found(module: ModuleType, picture: Image.Image) -> tuple[object, float]:
    """What the finders return for `picture`, comparable across the two modules, and their CPU ms."""
    started = time.thread_time()
    found = module.find_regions(module.finder_picture(picture), picture.size)
    spent = 1000.0 * (time.thread_time() - started)
    screen = None if found.screen is None else np.asarray(found.screen).tolist()
    return (found.canvas, found.tilt, found.cells, found.frames, screen), spent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--against", required=True, help="the commit whose server/regions.py is the other arm")
    parser.add_argument("--passes", type=int, default=3, help="times each picture is timed per arm")
    parser.add_argument("--max-photos", type=int, default=0, help="the first N photos only (0: all)")
    parser.add_argument("--families", default="", help="also the accuracy benchmark's edits of these families")
    parser.add_argument("--seed", type=int, default=1, help="split and edit seed of the edits")
    args = parser.parse_args(argv)
    photos = sorted(args.corpus.glob("*.jpg"))[: args.max_photos or None]
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    configure_threads(1)
    arms = {args.against: regions_at(args.against), "today": today}
    families = [family for family in args.families.split(",") if family]
    spent: dict[str, dict[str, list[float]]] = {arm: {"plain": [], "edited": []} for arm in arms}
    differing: list[str] = []
    for number, (name, picture) in enumerate(pictures(photos, families, args.seed)):
        kind = "plain" if number < len(photos) else "edited"
        for attempt in range(args.passes):
            order = list(arms) if (number + attempt) % 2 == 0 else list(reversed(arms))
            found = {}
            for arm in order:
                found[arm], ms = regions_found(arms[arm], picture)
                spent[arm][kind].append(ms)
        if len(set(map(repr, found.values()))) > 1:
            differing.append(name)
    rows = [
        {"arm": arm, "pictures": kind, "mean ms": statistics.fmean(values), "p50 ms": statistics.median(values)}
        for arm, kinds in spent.items()
        for kind, values in kinds.items()
        if values
    ]
    pictures_seen = len(spent["today"]["plain"] + spent["today"]["edited"]) // args.passes
    print(f"find_regions, {pictures_seen} pictures × {args.passes} passes, arms alternated; one thread's CPU\n")
    print(format_table(rows, ["arm", "pictures", "mean ms", "p50 ms"]))
    print(f"\npictures whose regions differ: {len(differing)} of {pictures_seen} {differing[:20]}")
    print(json.dumps({"hardware": hardware(), "against": args.against, "rows": rows, "differing": differing}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

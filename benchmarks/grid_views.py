"""Extra query views searched only when a check's first pass is uncertain: which ones, and when?

Builds benchmarks/accuracy.py's split and edits (same seed, same families, same other photos),
embeds the listed originals with one model, and for every query fingerprints it as a check does
today (the plain view plus the region views, `Fingerprinter.views`). Then, for the queries whose
first-pass best cosine reaches the lowest band edge studied, it embeds candidate extra views of
the query (grids of overlapping crops, a centre crop, small turns) and records each view's best
entries. The study then replays the rule "search the extra views of a view set when the first
pass's best cosine lies in [low, reject)" for each view set and band edge:

- caught: the true original's best cosine over all searched views reaches the review cosine and
  no other entry's beats it (the embedding alone; PDQ adds little to composites);
- false reviews: unrelated queries (distractors and their edits) whose best cosine reaches review;
- trigger rate: the share of plain unrelated photos, and of all unrelated queries, that pay for
  the extra views; extra embeddings per triggered query.

    .venv/bin/python -m benchmarks.grid_views --seed 1 [--max-photos 150] [--families paste_on_photo,...]

Writes benchmarks/results/grid_views.json (the raw per-query records, so view sets can be
re-studied with --from) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
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
    RESULTS,
    SCENE,
    SCENE_FAMILIES,
    OtherPhotos,
    Query,
    make_queries,
    render,
    split_corpus,
)
from benchmarks.edits import FAMILIES
from benchmarks.metrics import format_table
from lookalike.index import configure_threads
from lookalike.server.config import ServerConfig
from lookalike.server.embedder import MODEL_SSCD_DISTILLED, EmbedderPool, resized_to
from lookalike.server.fingerprint import Fingerprinter
from lookalike.server.imaging import DecodedImage, decode_image
from lookalike.server.scoring import EMBEDDING_CURVES

WEAK_FAMILIES = ("screen_photo", "chain_composite", "paste_on_busy", "paste_on_photo", "crop_70", "app_screenshot")
TOP = 5
"""Best entries kept per view."""
LOWEST_BAND_EDGE = 0.25
"""Extra views are embedded only for queries whose first pass reaches this cosine."""
BAND_EDGES = (0.25, 0.30, 0.35, 0.40, 0.45)
Box = tuple[int, int, int, int]


def _cosine_at(model: str, score: float) -> float:
    """The cosine at which the model's curve gives `score` (its curve rises monotonically)."""
    curve = EMBEDDING_CURVES[model]
    return float(np.interp(score, curve.scores, curve.xs))


def grid_boxes(size: tuple[int, int], cells: int, share: float) -> list[Box]:
    """cells × cells overlapping windows, each `share` of the picture's width and height, spread evenly
    from one edge to the other."""
    width, height = size
    w, h = round(width * share), round(height * share)
    xs = [round(i * (width - w) / (cells - 1)) for i in range(cells)] if cells > 1 else [(width - w) // 2]
    ys = [round(i * (height - h) / (cells - 1)) for i in range(cells)] if cells > 1 else [(height - h) // 2]
    return [(x, y, x + w, y + h) for y in ys for x in xs]


def turned(picture: Image.Image, degrees: float) -> Image.Image:
    """The picture turned and cut to the largest upright rectangle inside it (no fill shown)."""
    width, height = picture.size
    radians = math.radians(abs(degrees))
    sin, cos = math.sin(radians), math.cos(radians)
    # Largest axis-aligned rectangle of the original's aspect inside the turned picture.
    scale = min(width, height) / (min(width, height) * cos + max(width, height) * sin)
    w, h = round(width * scale), round(height * scale)
    rotated = picture.rotate(degrees, Image.Resampling.BILINEAR, expand=True)
    left, top = (rotated.width - w) // 2, (rotated.height - h) // 2
    return rotated.crop((left, top, left + w, top + h))


@dataclass(frozen=True)
class ViewSpec:
    """One candidate extra view family: how to cut its pictures from the query, at what short side."""

    name: str
    make: Callable[[DecodedImage, int], list[Image.Image]]
    short_side: int


def _grid(cells: int, share: float) -> Callable[[DecodedImage, int], list[Image.Image]]:
    def make(image: DecodedImage, short_side: int) -> list[Image.Image]:
        boxes = grid_boxes(image.shown.size, cells, share)
        return [resized_to(p, short_side) for p in image.crops(boxes, short_side)]

    return make


def _turns(*degrees: float) -> Callable[[DecodedImage, int], list[Image.Image]]:
    def make(image: DecodedImage, short_side: int) -> list[Image.Image]:
        return [resized_to(turned(image.shown, d), short_side) for d in degrees]

    return make


VIEW_SPECS = (
    ViewSpec("grid2@60/224", _grid(2, 0.6), 224),
    ViewSpec("grid2@60/160", _grid(2, 0.6), 160),
    ViewSpec("centre@60/224", _grid(1, 0.6), 224),
    ViewSpec("grid3@45/160", _grid(3, 0.45), 160),
    ViewSpec("grid3@45/224", _grid(3, 0.45), 224),
    ViewSpec("turn15/288", _turns(-15.0, 15.0), 288),
)
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "grid2@60/224": ("grid2@60/224",),
    "grid2@60/160": ("grid2@60/160",),
    "grid2+centre/224": ("grid2@60/224", "centre@60/224"),
    "grid3@45/160": ("grid3@45/160",),
    "grid3@45/224": ("grid3@45/224",),
    "grid2/224+grid3/160": ("grid2@60/224", "grid3@45/160"),
    "grid2+centre/224+grid3/160": ("grid2@60/224", "centre@60/224", "grid3@45/160"),
    "turn15": ("turn15/288",),
    "grid2/224+turn15": ("grid2@60/224", "turn15/288"),
}


def best_entries(similarities: np.ndarray, right: int | None) -> dict[str, Any]:
    """A view's TOP best entries (index, cosine) and the true original's cosine."""
    order = np.argsort(-similarities)[:TOP]
    return {
        "top": [[int(i), round(float(similarities[i]), 4)] for i in order],
        "right": None if right is None else round(float(similarities[right]), 4),
    }


def record_queries(
    queries: Sequence[Query],
    seed: int,
    others: OtherPhotos,
    fingerprinter: Fingerprinter,
    model: str,
    listed: np.ndarray,
    index_of: dict[str, int],
) -> list[dict[str, Any]]:
    """Per query: the first pass's views' best entries and, above LOWEST_BAND_EDGE, each extra view's."""
    embedder = fingerprinter.embedders.get(model)
    records = []
    started = time.monotonic()
    for position, data in enumerate(render(queries, seed, others)):
        query = queries[position]
        right = index_of.get(query.source) if query.kind == POSITIVE else None
        fingerprint = fingerprinter.fingerprint(data)
        views = fingerprinter.views(fingerprint, model)
        first = [best_entries(row, right) for row in views @ listed.T]
        record: dict[str, Any] = {"id": query.id, "family": query.family, "kind": query.kind, "first": first}
        if max(view["top"][0][1] for view in first) >= LOWEST_BAND_EDGE:
            extra: dict[str, list[dict[str, Any]]] = {}
            for spec in VIEW_SPECS:
                rows = embedder.embed_many(_one_size(spec.make(fingerprint.image, spec.short_side))) @ listed.T
                extra[spec.name] = [best_entries(row, right) for row in rows]
            record["extra"] = extra
        records.append(record)
        if position % 250 == 249:
            rate = (position + 1) / (time.monotonic() - started)
            print(f"  {position + 1}/{len(queries)} queries ({rate:.1f}/s)", file=sys.stderr)
    return records


def _merged(views: Sequence[dict[str, Any]]) -> tuple[dict[int, float], float | None]:
    """Per entry its best cosine over the views (as the server keeps it), and the true original's."""
    best: dict[int, float] = {}
    for view in views:
        for entry, cosine in view["top"]:
            best[entry] = max(best.get(entry, -1.0), cosine)
    rights = [view["right"] for view in views if view["right"] is not None]
    return best, max(rights) if rights else None


def outcome(views: Sequence[dict[str, Any]], review: float) -> tuple[bool, float]:
    """(caught: the true original reaches review and tops the entries, best cosine over all entries)."""
    best, right = _merged(views)
    top = max(best.values())
    caught = right is not None and right >= review and right >= top
    return caught, top


def study(records: Sequence[dict[str, Any]], review: float, reject: float) -> list[dict[str, Any]]:
    """One row per view set and band edge (and the first pass alone): caught per family, false reviews,
    trigger rates and extra embeddings per triggered query."""
    families = sorted({r["family"] for r in records if r["kind"] == POSITIVE})
    plans: list[tuple[str, float, tuple[str, ...]]] = [("first pass only", 1.0, ())]
    plans += [(name, low, specs) for name, specs in VIEW_SETS.items() for low in BAND_EDGES]
    rows = []
    for name, low, specs in plans:
        caught: dict[str, list[bool]] = {f: [] for f in families}
        false_reviews = scene_over_reject = 0
        triggered = {"plain": 0, "unrelated": 0, "positive": 0}
        counts = {"plain": 0, "unrelated": 0, "positive": 0}
        extra_views = 0
        for record in records:
            views = list(record["first"])
            first_best = max(v["top"][0][1] for v in views)
            fire = low <= first_best < reject and "extra" in record and bool(specs)
            if fire:
                for spec in specs:
                    views += record["extra"][spec]
                    extra_views += len(record["extra"][spec])
            hit, top = outcome(views, review)
            kind = record["kind"]
            if kind == POSITIVE:
                caught[record["family"]].append(hit)
                counts["positive"] += 1
                triggered["positive"] += fire
            elif kind == NEGATIVE:
                counts["unrelated"] += 1
                triggered["unrelated"] += fire
                false_reviews += top >= review
                if record["family"] == ORIGINAL:
                    counts["plain"] += 1
                    triggered["plain"] += fire
            elif kind == SCENE:
                scene_over_reject += top >= reject
        fired = sum(triggered.values())
        row: dict[str, Any] = {"view set": name, "low": low if specs else "-"}
        row.update({family: float(np.mean(hits)) if hits else float("nan") for family, hits in caught.items()})
        row["false reviews"] = f"{false_reviews}/{counts['unrelated']}"
        row["scene ≥ reject cosine"] = scene_over_reject
        row["trigger plain"] = triggered["plain"] / max(1, counts["plain"])
        row["trigger unrelated"] = triggered["unrelated"] / max(1, counts["unrelated"])
        row["trigger positive"] = triggered["positive"] / max(1, counts["positive"])
        row["extra/trig"] = extra_views / max(1, fired) if specs else 0.0
        rows.append(row)
    return rows


def measure_probe_cost(
    plain: Sequence[bytes], composites: Sequence[bytes], model: str, view_set: str
) -> dict[str, float]:
    """CPU milliseconds, one thread, of a check's first pass (`Fingerprinter.compute` with views) and of a
    second look with `view_set` (decode again, cut and embed its views), plain photos and composites
    alternated so load hits both alike."""
    configure_threads(1)
    fingerprinter = Fingerprinter(ServerConfig().max_pixels, EmbedderPool(threads=1))
    embedder = fingerprinter.embedders.get(model)
    fingerprinter.compute(plain[0], views=(model,))  # load the model before timing
    specs = [spec for spec in VIEW_SPECS if spec.name in VIEW_SETS[view_set]]
    spent: dict[str, list[float]] = {}
    for pair in zip(plain, composites, strict=False):
        for kind, data in zip(("plain", "composite"), pair, strict=True):
            started = time.process_time()
            fingerprinter.compute(data, views=(model,))
            probing = time.process_time()
            again = decode_image(data, fingerprinter.max_pixels)
            for spec in specs:
                embedder.embed_many(_one_size(spec.make(again, spec.short_side)))
            done = time.process_time()
            spent.setdefault(f"{kind} first pass", []).append(1000.0 * (probing - started))
            spent.setdefault(f"{kind} second look", []).append(1000.0 * (done - probing))
    return {name: round(float(np.mean(values)), 1) for name, values in spent.items()}


def _one_size(pictures: list[Image.Image]) -> list[Image.Image]:
    """Pictures resized to the first one's size, so they embed as one batch."""
    size = pictures[0].size
    return [p if p.size == size else p.resize(size, Image.Resampling.BILINEAR) for p in pictures]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--seed", type=int, default=1, help="split and edit seed (1: tuning)")
    parser.add_argument("--listed-share", type=float, default=0.6)
    parser.add_argument("--max-photos", type=int, default=0, help="use a seeded subset of this many photos")
    parser.add_argument("--families", default=",".join(WEAK_FAMILIES), help="positive families studied")
    parser.add_argument("--negative-families", default=",".join(FAMILIES), help="edits of distractors checked")
    parser.add_argument("--model", default=MODEL_SSCD_DISTILLED)
    parser.add_argument("--out", type=Path, default=RESULTS / "grid_views.json")
    parser.add_argument("--costs", type=int, default=0, help="also time N plain photos' and composites' passes")
    parser.add_argument("--cost-view-set", default="grid2+centre/224", choices=sorted(VIEW_SETS))
    parser.add_argument("--from", dest="source", type=Path, help="study records written before, measure nothing")
    args = parser.parse_args(argv)

    review = _cosine_at(args.model, 0.5)
    reject = _cosine_at(args.model, 0.8)
    photos = sorted(args.corpus.glob("*.jpg")) + sorted(args.corpus.glob("*.png"))
    if args.max_photos:
        photos = sorted(random.Random(args.seed).sample(photos, min(args.max_photos, len(photos))))
    split = split_corpus(photos, args.seed, args.listed_share)
    if args.source:
        saved = json.loads(args.source.read_text())
        records, meta = saved["records"], saved["meta"]
    else:
        others = OtherPhotos(split.distractors)
        configure_threads(1)
        fingerprinter = Fingerprinter(ServerConfig().max_pixels, EmbedderPool(threads=1))
        index_of = {photo.name: i for i, photo in enumerate(split.listed)}
        listed = np.stack(
            [fingerprinter.embedding(fingerprinter.fingerprint(p.read_bytes()), args.model) for p in split.listed]
        )
        families = [f for f in args.families.split(",") if f]
        negative_families = [f for f in args.negative_families.split(",") if f]
        queries = (
            make_queries(split.listed, POSITIVE, families)
            + make_queries(split.distractors, NEGATIVE, negative_families)
            + make_queries(split.scene, SCENE, SCENE_FAMILIES)
        )
        print(f"{len(split.listed)} listed; {len(queries)} queries", file=sys.stderr)
        started = time.monotonic()
        records = record_queries(queries, args.seed, others, fingerprinter, args.model, listed, index_of)
        meta = {
            "seed": args.seed,
            "model": args.model,
            "listed": len(split.listed),
            "distractors": len(split.distractors),
            "queries": len(queries),
            "seconds": round(time.monotonic() - started, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "records": records}))
    if args.costs:
        sample = random.Random(args.seed)
        chosen = sample.sample(split.listed, min(args.costs, len(split.listed)))
        made_from = make_queries(chosen, POSITIVE, ["paste_on_photo", "paste_on_busy", "app_screenshot"])
        composites = [query for n, query in enumerate(made_from) if n % 3 == n // 3 % 3]  # one family each
        plain = [path.read_bytes() for path in sample.sample(photos, len(composites))]
        made = list(render(composites, args.seed, OtherPhotos(split.distractors)))
        meta["costs_ms"] = measure_probe_cost(plain, made, args.model, args.cost_view_set)
    rows = study(records, review, reject)
    columns = list(rows[0])
    print(f"seed {meta['seed']}, {meta['model']}: review at cosine {review:.3f}, reject {reject:.3f}; {meta}")
    print(format_table(rows, columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

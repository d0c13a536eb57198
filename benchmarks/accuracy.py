"""Accuracy benchmark: how many re-uploads does Lookalike catch, at how few false alarms?

Splits a photo folder (seeded) into listed originals and unlisted distractors, makes one
edited copy of every photo per DISC21-style edit family (benchmarks/edits.py), and sends
everything through the real service: an in-process server on loopback, the thin client,
lists created with the default thresholds. Edits of listed photos are the positives,
edits of distractors (and the distractors themselves) the negatives.

Side by side, per signal: SHA-256, pHash, PDQ (and PDQ at Hamming ≤ 31, HMA's threshold),
SSCD full and distilled cosines, and the fused score of each model's list: recall at a
false-positive rate of 1e-3 and at zero false positives, µAP (DISC21's metric), recall per
edit family; and at the lists' default thresholds, the recall of reject + review and the
false reviews and rejects.

    .venv/bin/python -m benchmarks.accuracy [--corpus DIR] [--seed 0] [--models sscd-distilled,sscd]

Prints a table and JSON (also written to benchmarks/results/accuracy.json) and draws
the precision-recall curves to benchmarks/results/accuracy.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.edits import EDIT_FAMILIES, encode_edited
from benchmarks.metrics import (
    Prediction,
    best_scores,
    format_table,
    micro_average_precision,
    plot_precision_recall,
    precision_recall_curve,
    recall_at,
    threshold_at_fpr,
)
from lookalike.client import LookalikeClient, LookalikeError
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig
from lookalike.server.embedder import MODEL_SSCD, MODEL_SSCD_DISTILLED
from lookalike.server.scoring import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "dev"
RESULTS = ROOT / "benchmarks" / "results"
ORIGINAL = "original"
PDQ_HMA_THRESHOLD = 31
TARGET_FPR = 1e-3
TOP_K = 10


@dataclass(frozen=True)
class Query:
    id: str
    path: Path  # the photo it is made from
    family: str
    positive: bool

    @property
    def source(self) -> str:
        return self.path.name


def series_key(name: str) -> str:
    """Photos of one series share a key: numbered shots, left/right pairs, an original
    and its modified copy, one test image shipped by two packages.

    Such photos show one scene, so a split must keep them on one side, or a "false
    positive" is really a true match. Generic rule, no per-file list: the first word
    of the file's own name (folders and package dropped), without digits and a
    trailing side marker (left, right, l, r, a, b).
    """
    own = name.rsplit(".", 1)[0].lower().split("__")[-1]
    word = re.split(r"[\d._\- ]+", own)[0]
    return re.sub(r"(left|right|l|r|a|b)$", "", word)


def split_corpus(photos: Sequence[Path], seed: int, listed_share: float) -> tuple[list[Path], list[Path]]:
    """Seeded split into listed originals and distractors, near-duplicates and series kept together."""
    parent = {p.name: p.name for p in photos}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def join(a: str, b: str) -> None:
        if a in parent and b in parent:
            parent[root(a)] = root(b)

    pairs = photos[0].parent.parent / "NEAR_DUPLICATES.tsv" if photos else None
    if pairs is not None and pairs.exists():
        for line in pairs.read_text().splitlines()[1:]:
            a, b = line.split("\t")[:2]
            join(a, b)
    by_series: dict[str, str] = {}
    for photo in photos:
        first = by_series.setdefault(series_key(photo.name), photo.name)
        join(photo.name, first)
    groups: dict[str, list[Path]] = {}
    for photo in photos:
        groups.setdefault(root(photo.name), []).append(photo)
    ordered = sorted(groups.values(), key=lambda group: group[0].name)
    random.Random(seed).shuffle(ordered)
    listed: list[Path] = []
    distractors: list[Path] = []
    for group in ordered:
        (listed if len(listed) < listed_share * len(photos) else distractors).extend(group)
    return listed, distractors


def make_queries(photos: Sequence[Path], positive: bool, families: Sequence[str]) -> list[Query]:
    """One edited copy per family of every photo; distractors also as they are."""
    kinds = list(families) if positive else [ORIGINAL, *families]
    return [Query(f"{photo.name}:{kind}", photo, kind, positive) for photo in photos for kind in kinds]


def render(queries: Sequence[Query], seed: int) -> Iterator[bytes]:
    """Each query's bytes, made lazily (seeded per photo and family) so edits overlap checks."""
    cached: tuple[Path, Image.Image] | None = None
    for query in queries:
        if query.family == ORIGINAL:
            yield query.path.read_bytes()
            continue
        if cached is None or cached[0] != query.path:
            with Image.open(query.path) as image:
                cached = (query.path, image.convert("RGB"))
        rng = random.Random(f"{seed}:{query.source}:{query.family}")
        yield encode_edited(EDIT_FAMILIES[query.family](cached[1], rng))


def _bits(hex_codes: Sequence[str]) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex("".join(hex_codes)), np.uint8).reshape(len(hex_codes), -1), axis=1)


@dataclass
class Collected:
    """Predictions per signal plus what the default thresholds decided."""

    predictions: dict[str, list[Prediction]] = field(default_factory=dict)
    decisions: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)
    """Per model: query id -> (decision, flagged the true original)."""

    def add(self, signal: str, query: str, reference: str, score: float) -> None:
        self.predictions.setdefault(signal, []).append(Prediction(query, reference, score))


def run_checks(
    client: LookalikeClient,
    queries: Sequence[Query],
    seed: int,
    lists: dict[str, str],
    originals: dict[str, Any],
    truth: dict[str, str],
) -> Collected:
    """Check every query against every model's list; turn replies into per-signal predictions."""
    names = list(lists.values())
    model_of = {name: model for model, name in lists.items()}
    ref_ids = sorted(originals)
    pdq_refs = _bits([originals[r].hashes.pdq for r in ref_ids])
    phash_refs = _bits([originals[r].hashes.phash for r in ref_ids])
    sha_refs = {originals[r].sha256: r for r in ref_ids}
    collected = Collected()
    for signal in ("sha256", "phash", "pdq", *lists, *(f"fused:{model}" for model in lists)):
        collected.predictions[signal] = []
    requests = (client.check_request(data, names, top_k=TOP_K * len(names)) for data in render(queries, seed))
    started = time.monotonic()
    for position, result in client.check_many(requests):
        query = queries[position]
        if isinstance(result, LookalikeError):
            print(f"  {query.id}: {result}", file=sys.stderr)
            continue
        if result.sha256 in sha_refs:
            collected.add("sha256", query.id, sha_refs[result.sha256], 1.0)
        for signal, refs, hex_code, bits in (
            ("pdq", pdq_refs, result.hashes.pdq, 256),
            ("phash", phash_refs, result.hashes.phash, 64),
        ):
            distances = (_bits([hex_code]) != refs).sum(axis=1)
            for nearest in np.argsort(distances, kind="stable")[:TOP_K]:
                collected.add(signal, query.id, ref_ids[nearest], 1.0 - distances[nearest] / bits)
        for match in result.matches:
            model = model_of[match.list]
            collected.add(f"fused:{model}", query.id, match.id, match.score)
            if match.evidence.embedding_similarity is not None:
                collected.add(model, query.id, match.id, match.evidence.embedding_similarity)
        for name in names:
            flagged = [m for m in result.matches if m.list == name and m.decision != "accept"]
            decision = max((m.decision for m in flagged), key=("review", "reject").index, default="accept")
            right = truth.get(query.id) in {m.id for m in flagged}
            collected.decisions.setdefault(model_of[name], {})[query.id] = (decision, right)
        if position % 500 == 499:
            rate = (position + 1) / (time.monotonic() - started)
            print(f"  {position + 1}/{len(queries)} checks ({rate:.1f}/s)", file=sys.stderr)
    return collected


def evaluate(collected: Collected, queries: Sequence[Query], truth: dict[str, str]) -> dict[str, Any]:
    """Recall at FPR 1e-3 and at zero FP, µAP and per-family recall for every signal."""
    negatives = [q.id for q in queries if not q.positive]
    positives = [q for q in queries if q.positive]
    signals: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for signal, predictions in collected.predictions.items():
        best = best_scores(predictions)
        true_score = {p.query: p.score for p in predictions if truth.get(p.query) == p.reference}
        negative_best = [best.get(q, -np.inf) for q in negatives]
        positive_scores = [true_score.get(q.id, -np.inf) for q in positives]
        at_fpr = threshold_at_fpr(negative_best, TARGET_FPR)
        at_zero = threshold_at_fpr(negative_best, 0.0)
        families = sorted({q.family for q in positives})
        signals[signal] = {
            "micro_ap": micro_average_precision(predictions, truth),
            "recall_at_fpr_1e-3": recall_at(positive_scores, at_fpr),
            "recall_at_zero_fp": recall_at(positive_scores, at_zero),
            "threshold_at_fpr_1e-3": at_fpr,
            "threshold_at_zero_fp": at_zero,
            "recall_by_family_at_fpr_1e-3": {
                family: recall_at([true_score.get(q.id, -np.inf) for q in positives if q.family == family], at_fpr)
                for family in families
            },
        }
        precision, recall, _ = precision_recall_curve(predictions, truth)
        curves[signal] = (recall, precision)
        if signal == "pdq":
            hma = 1.0 - PDQ_HMA_THRESHOLD / 256
            signals["pdq@31"] = {
                "recall": recall_at(positive_scores, hma),
                "false_positives": int(sum(score >= hma for score in negative_best)),
                "recall_by_family": {
                    family: recall_at([true_score.get(q.id, -np.inf) for q in positives if q.family == family], hma)
                    for family in families
                },
            }
    defaults: dict[str, Any] = {}
    for model, decided in collected.decisions.items():
        caught = [decided[q.id][1] for q in positives if q.id in decided]
        negative_decisions = [decided[q][0] for q in negatives if q in decided]
        defaults[model] = {
            "recall_reject_or_review": float(np.mean(caught)) if caught else 0.0,
            "recall_reject": float(np.mean([decided[q.id] == ("reject", True) for q in positives if q.id in decided])),
            "false_reviews": negative_decisions.count("review"),
            "false_rejects": negative_decisions.count("reject"),
            "negatives": len(negative_decisions),
            "recall_by_family": {
                family: float(np.mean([decided[q.id][1] for q in positives if q.family == family and q.id in decided]))
                for family in sorted({q.family for q in positives})
            },
        }
    return {"signals": signals, "default_thresholds": defaults, "curves": curves}


def report(results: dict[str, Any], meta: dict[str, Any]) -> str:
    signals = results["signals"]
    rows = [
        {
            "signal": name,
            "µAP": values["micro_ap"],
            "R@FPR1e-3": values["recall_at_fpr_1e-3"],
            "R@0FP": values["recall_at_zero_fp"],
            "thr@1e-3": values["threshold_at_fpr_1e-3"],
        }
        for name, values in signals.items()
        if "micro_ap" in values
    ]
    text = [f"Accuracy on {meta['corpus']} (seed {meta['seed']}): {meta['counts']}", ""]
    text.append(format_table(rows, ["signal", "µAP", "R@FPR1e-3", "R@0FP", "thr@1e-3"]))
    if "pdq@31" in signals:
        hma = signals["pdq@31"]
        text.append(f"\nPDQ ≤ 31 (HMA): recall {hma['recall']:.3f}, false positives {hma['false_positives']}")
    for model, values in results["default_thresholds"].items():
        text.append(
            f"\nDefault thresholds, {model} list: recall (reject+review) {values['recall_reject_or_review']:.3f}, "
            f"reject {values['recall_reject']:.3f}; false reviews {values['false_reviews']}, "
            f"false rejects {values['false_rejects']} of {values['negatives']} negatives"
        )
    first: dict[str, Any] = next(iter(results["default_thresholds"].values()), {})
    family_names = sorted(first.get("recall_by_family", {}))
    columns = ["family", *[f"fused:{m}@default" for m in results["default_thresholds"]], *signals]
    family_rows = []
    for family in family_names:
        row: dict[str, object] = {"family": family}
        for model, values in results["default_thresholds"].items():
            row[f"fused:{model}@default"] = values["recall_by_family"][family]
        for name, values in signals.items():
            by_family = values.get("recall_by_family_at_fpr_1e-3") or values.get("recall_by_family", {})
            row[name] = by_family.get(family, float("nan"))
        family_rows.append(row)
    text.append("\nRecall per edit family (signals at their FPR 1e-3 threshold; pdq@31 at ≤ 31 bits):")
    text.append(format_table(family_rows, columns))
    return "\n".join(text)


def hardware() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(os.environ.get("LOOKALIKE_CORPUS", DEFAULT_CORPUS)))
    parser.add_argument("--seed", type=int, default=0, help="split and edit seed")
    parser.add_argument("--listed-share", type=float, default=0.6, help="share of photos listed")
    parser.add_argument("--max-photos", type=int, default=0, help="use a seeded subset of this many photos")
    parser.add_argument("--families", default=",".join(EDIT_FAMILIES), help="comma-separated edit families")
    parser.add_argument("--models", default=f"{MODEL_SSCD_DISTILLED},{MODEL_SSCD}", help="lists to build, one a model")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for accuracy.json and accuracy.png")
    args = parser.parse_args(argv)

    photos = sorted(args.corpus.glob("*.jpg")) + sorted(args.corpus.glob("*.png"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    if args.max_photos:
        photos = sorted(random.Random(args.seed).sample(photos, min(args.max_photos, len(photos))))
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(EDIT_FAMILIES)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")
    models = [m for m in args.models.split(",") if m]
    listed, distractors = split_corpus(photos, args.seed, args.listed_share)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lookalike-accuracy-") as data:
        config = ServerConfig(listen="127.0.0.1:0", data=Path(data), map_size=1 << 32)
        running = create_server(config)
        try:
            with LookalikeClient(f"127.0.0.1:{running.port}", timeout=600) as client:
                lists = {model: f"bench-{model}" for model in models}
                for model, name in lists.items():
                    client.create_list(name, model=model)
                originals: dict[str, Any] = {}
                for name in lists.values():
                    requests = (client_add_request(name, photo) for photo in listed)
                    for position, added in client.add_many(requests):
                        if isinstance(added, LookalikeError):
                            raise SystemExit(f"could not add {listed[position].name}: {added}")
                        originals[added.id] = added
                print(f"listed {len(listed)} originals in {len(lists)} lists", file=sys.stderr)
                queries = make_queries(listed, True, families) + make_queries(distractors, False, families)
                truth = {q.id: q.source for q in queries if q.positive}
                print(f"checking {len(queries)} queries", file=sys.stderr)
                collected = run_checks(client, queries, args.seed, lists, originals, truth)
        finally:
            running.stop(grace=1)
    results = evaluate(collected, queries, truth)
    curves = results.pop("curves")
    meta = {
        "corpus": str(args.corpus),
        "seed": args.seed,
        "families": families,
        "models": models,
        "default_model": DEFAULT_MODEL,
        "counts": {
            "listed": len(listed),
            "distractors": len(distractors),
            "positive_queries": sum(q.positive for q in queries),
            "negative_queries": sum(not q.positive for q in queries),
        },
        "hardware": hardware(),
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    plot_precision_recall(curves, args.out / "accuracy.png", f"Precision-recall, seed {args.seed}")
    print(report(results, meta))
    print(json.dumps({"meta": meta, **results}))
    return 0


def client_add_request(list_name: str, photo: Path) -> pb.AddEntryRequest:
    """A bulk-add request naming the entry after its file, so replies map back to photos."""
    return pb.AddEntryRequest(list=list_name, image=pb.Image(data=photo.read_bytes()), id=photo.name)


if __name__ == "__main__":
    raise SystemExit(main())

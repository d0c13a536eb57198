"""Accuracy benchmark: how many re-uploads does Lookalike catch, at how few false alarms?

Splits a photo folder (seeded) into listed originals and unlisted distractors, makes one
edited copy of every photo per edit family (benchmarks/edits.py: DISC21-style edits of the
picture alone, and composites that put it inside other photos and drawn UI), and sends
everything through the real service: an in-process server on loopback, the thin client,
lists created with the default thresholds. Edits of listed photos are the positives,
edits of distractors (and the distractors themselves) the negatives; composites take their
other photos from the distractors, so a composite of distractors is a negative too. Other
shots of a listed photo's scene (held back from the lists) are negatives of their own: they
may go to review, never be rejected.

Side by side, per signal: SHA-256, pHash, PDQ (and PDQ at Hamming ≤ 31, HMA's threshold),
SSCD full and distilled cosines, and the fused score of each model's list: recall at a
false-positive rate of 1e-3 and at zero false positives, µAP (DISC21's metric), recall per
edit family; and at the lists' default thresholds, the recall of reject + review and the
false reviews and rejects; per family the share caught (reject or review with the true
original the top flagged match), rejected automatically and sent to review; and the CPU a
check's fingerprint costs, plain photos against composites and against animations.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.edits import (
    ANIMATED_FAMILIES,
    COMPOSITE_FAMILIES,
    FAMILIES,
    Others,
    apply_edit,
    drawn_others,
    encode_edited,
)
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
from lookalike.index import configure_threads
from lookalike.server.app import create_server
from lookalike.server.config import ServerConfig
from lookalike.server.embedder import MODEL_SSCD, MODEL_SSCD_DISTILLED, EmbedderPool
from lookalike.server.fingerprint import Fingerprinter
from lookalike.server.scoring import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "dev"
RESULTS = ROOT / "benchmarks" / "results"
ORIGINAL = "original"
PDQ_HMA_THRESHOLD = 31
TARGET_FPR = 1e-3
TOP_K = 10
POSITIVE, NEGATIVE, SCENE = "positive", "negative", "scene"
SCENE_FAMILIES = ("resize_jpeg", "crop_30", "colour_jitter", "flip_h")
"""Light edits of a held-back shot of a listed scene, checked besides the shot itself."""
COMPOSITE_SIDE = 800
"""Other photos are used at most this large on the long side (backgrounds, tiles, avatars)."""
COST_SAMPLES = 40
"""Plain photos, composites and animations each fingerprinted this many times for the CPU costs."""


@dataclass(frozen=True)
class Query:
    id: str
    path: Path  # the photo it is made from
    family: str
    kind: str  # POSITIVE, NEGATIVE or SCENE

    @property
    def positive(self) -> bool:
        return self.kind == POSITIVE

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


SAME_SCENE_TABLE = Path(__file__).with_name("same_scene.tsv")
"""Pairs of corpus photos that show one scene but that the corpus's NEAR_DUPLICATES.tsv lacks, in its format,
each with the evidence it was added on."""


def near_duplicate_pairs(photos: Sequence[Path]) -> list[tuple[str, str, str]]:
    """(file a, file b, evidence) of the corpus's NEAR_DUPLICATES.tsv, beside the photos' folder, and of
    SAME_SCENE_TABLE."""
    if not photos:
        return []
    rows = []
    for table in (photos[0].parent.parent / "NEAR_DUPLICATES.tsv", SAME_SCENE_TABLE):
        if table.exists():
            rows += [line.split("\t") for line in table.read_text().splitlines()[1:] if line.strip()]
    return [(row[0], row[1], row[2] if len(row) > 2 else "") for row in rows]


def is_copy_pair(a: str, b: str, evidence: str) -> bool:
    """Whether a NEAR_DUPLICATES pair is one picture (a documented crop or resample, or one file
    named twice) rather than another shot of the scene (stereo pairs, consecutive frames,
    overlapping views, found by hashes or an ORB scan). Only the former can be a copy."""
    return a == b or evidence.startswith("known:")


@dataclass(frozen=True)
class Split:
    listed: list[Path]
    """Originals added to the lists: their edits are the positives."""
    distractors: list[Path]
    """Unlisted photos: they and their edits are negatives, and composites take their other photos from them."""
    scene: list[Path]
    """Other shots of a listed photo's scene, held back: never to be rejected."""


def split_corpus(photos: Sequence[Path], seed: int, listed_share: float) -> Split:
    """Seeded split into listed originals and distractors, near-duplicates and series kept together.

    Other shots of one scene (NEAR_DUPLICATES pairs that are not copies, `is_copy_pair`) are
    always on the listed side, every second one of each connected set (by name) held back as a
    same-scene negative: each held-back shot has a listed shot of its scene."""
    parent = {p.name: p.name for p in photos}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def join(a: str, b: str) -> None:
        if a in parent and b in parent:
            parent[root(a)] = root(b)

    pairs = near_duplicate_pairs(photos)
    scene_pairs = [(a, b) for a, b, evidence in pairs if not is_copy_pair(a, b, evidence)]
    for a, b in scene_pairs:
        join(a, b)
    scenes = {root(a) for a, b in scene_pairs if a in parent}
    held_back: set[str] = set()
    for scene_root in scenes:
        members = sorted(name for name in parent if root(name) == scene_root)
        held_back.update(members[1::2])
    for a, b, _ in pairs:
        join(a, b)
    by_series: dict[str, str] = {}
    for photo in photos:
        first = by_series.setdefault(series_key(photo.name), photo.name)
        join(photo.name, first)
    scene_groups = {root(name) for name in held_back}
    groups: dict[str, list[Path]] = {}
    for photo in photos:
        groups.setdefault(root(photo.name), []).append(photo)
    ordered = sorted(groups.values(), key=lambda group: group[0].name)
    random.Random(seed).shuffle(ordered)
    ordered.sort(key=lambda group: root(group[0].name) not in scene_groups)  # stable: scenes first
    listed: list[Path] = []
    distractors: list[Path] = []
    scene: list[Path] = []
    for group in ordered:
        if root(group[0].name) in scene_groups:
            for photo in group:
                (scene if photo.name in held_back else listed).append(photo)
        else:
            (listed if len(listed) < listed_share * len(photos) else distractors).extend(group)
    return Split(listed, distractors, scene)


def make_queries(photos: Sequence[Path], kind: str, families: Sequence[str]) -> list[Query]:
    """One edited copy per family of every photo; negatives also as they are."""
    names = list(families) if kind == POSITIVE else [ORIGINAL, *families]
    return [Query(f"{photo.name}:{family}", photo, family, kind) for photo in photos for family in names]


class OtherPhotos:
    """Unlisted photos for composites (backgrounds, collage tiles, avatars), decoded once at most
    COMPOSITE_SIDE on the long side; drawn busy pictures when there are none."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = sorted(paths)
        self._loaded: dict[Path, Image.Image] = {}

    def excluding(self, path: Path) -> Others:
        """A picker over every photo but `path`: a composite of a distractor never shows it twice."""
        choices = [other for other in self.paths if other != path]

        def pick(rng: random.Random) -> Image.Image:
            return self._load(rng.choice(choices)) if choices else drawn_others(rng)

        return pick

    def _load(self, path: Path) -> Image.Image:
        picture = self._loaded.get(path)
        if picture is None:
            with Image.open(path) as image:
                picture = image.convert("RGB")
            picture.thumbnail((COMPOSITE_SIDE, COMPOSITE_SIDE), Image.Resampling.LANCZOS)
            self._loaded[path] = picture
        return picture


def render(queries: Sequence[Query], seed: int, others: OtherPhotos) -> Iterator[bytes]:
    """Each query's bytes, made lazily (seeded per photo and family) so edits overlap checks."""
    cached: tuple[Path, Image.Image] | None = None
    for query in queries:
        if query.family == ORIGINAL:
            yield query.path.read_bytes()
            continue
        if cached is None or cached[0] != query.path:
            cached = (query.path, rgb_image(query.path))
        yield edited_bytes(query, cached[1], seed, others)


def rgb_image(path: Path) -> Image.Image:
    """A photo of the corpus, decoded, in RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")


def edited_bytes(query: Query, picture: Image.Image, seed: int, others: OtherPhotos) -> bytes:
    """One query's seeded edit of its photo."""
    rng = random.Random(f"{seed}:{query.source}:{query.family}")
    return encode_edited(apply_edit(query.family, picture, rng, others.excluding(query.path)))


def _bits(hex_codes: Sequence[str]) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex("".join(hex_codes)), np.uint8).reshape(len(hex_codes), -1), axis=1)


@dataclass
class Collected:
    """Predictions per signal plus what the default thresholds decided."""

    predictions: dict[str, list[Prediction]] = field(default_factory=dict)
    decisions: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)
    """Per model: query id -> (decision, the top flagged match is the true original)."""
    flagged: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    """Per model: query id -> (top flagged entry, its score), for queries with a flagged match."""
    details: list[dict[str, Any]] = field(default_factory=list)
    """Per query, its best matches' raw evidence (for studies of the decision rules; --details)."""

    def add(self, signal: str, query: str, reference: str, score: float) -> None:
        self.predictions.setdefault(signal, []).append(Prediction(query, reference, score))


def run_checks(
    client: LookalikeClient,
    queries: Sequence[Query],
    seed: int,
    lists: dict[str, str],
    originals: dict[str, Any],
    truth: dict[str, str],
    others: OtherPhotos,
    details: bool = False,
) -> Collected:
    """Check every query against every model's list; turn replies into per-signal predictions
    (and, with `details`, keep each query's best matches' raw evidence)."""
    names = list(lists.values())
    model_of = {name: model for model, name in lists.items()}
    ref_ids = sorted(originals)
    pdq_refs = _bits([originals[r].hashes.pdq for r in ref_ids])
    phash_refs = _bits([originals[r].hashes.phash for r in ref_ids])
    sha_refs = {originals[r].sha256: r for r in ref_ids}
    collected = Collected()
    for signal in ("sha256", "phash", "pdq", *lists, *(f"fused:{model}" for model in lists)):
        collected.predictions[signal] = []
    requests = (client.check_request(data, names, top_k=TOP_K * len(names)) for data in render(queries, seed, others))
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
        if details:
            collected.details.append(query_details(query, result, originals, truth))
        for name in names:
            flagged = [m for m in result.matches if m.list == name and m.decision != "accept"]
            decision = max((m.decision for m in flagged), key=("review", "reject").index, default="accept")
            top = max(flagged, key=lambda m: m.score) if flagged else None
            right = top is not None and top.id == truth.get(query.id)
            collected.decisions.setdefault(model_of[name], {})[query.id] = (decision, right)
            if top is not None:
                collected.flagged.setdefault(model_of[name], {})[query.id] = (top.id, round(top.score, 4))
        if position % 500 == 499:
            rate = (position + 1) / (time.monotonic() - started)
            print(f"  {position + 1}/{len(queries)} checks ({rate:.1f}/s)", file=sys.stderr)
    return collected


DETAILED_MATCHES = 3
"""Matches per query whose raw evidence --details keeps."""


def query_details(query: Query, result: Any, originals: dict[str, Any], truth: dict[str, str]) -> dict[str, Any]:
    """A query's best matches with their raw evidence, pHash distance and PDQ qualities."""
    phash = _bits([result.hashes.phash])[0]
    matches = []
    for match in sorted(result.matches, key=lambda m: -m.score)[:DETAILED_MATCHES]:
        entry = originals[match.id].hashes
        evidence = match.evidence
        matches.append(
            {
                "id": match.id,
                "list": match.list,
                "score": round(match.score, 4),
                "decision": match.decision,
                "cosine": evidence.embedding_similarity,
                "pdq": evidence.pdq_distance,
                "phash": int((_bits([entry.phash])[0] != phash).sum()),
                "quality": min(result.hashes.pdq_quality, entry.pdq_quality),
            }
        )
    return {
        "query": query.id,
        "kind": query.kind,
        "family": query.family,
        "truth": truth.get(query.id),
        "matches": matches,
    }


def _shares(decided: dict[str, tuple[str, bool]], queries: Sequence[Query]) -> dict[str, float]:
    """Of true copies: caught (reject or review, the true original on top), rejected with it on
    top, and sent to review (the human cost, whatever is on top)."""
    rows = [decided[q.id] for q in queries if q.id in decided]
    if not rows:
        return {"caught": float("nan"), "reject": float("nan"), "review": float("nan")}
    return {
        "caught": float(np.mean([right and decision != "accept" for decision, right in rows])),
        "reject": float(np.mean([right and decision == "reject" for decision, right in rows])),
        "review": float(np.mean([decision == "review" for decision, _ in rows])),
    }


def evaluate(collected: Collected, queries: Sequence[Query], truth: dict[str, str]) -> dict[str, Any]:
    """Recall at FPR 1e-3 and at zero FP, µAP and per-family recall for every signal; at the
    default thresholds, per family the shares caught, rejected and reviewed, and the false
    alarms on unrelated negatives (plain and composites) and on other shots of listed scenes."""
    negatives = [q.id for q in queries if q.kind == NEGATIVE]
    positives = [q for q in queries if q.positive]
    counted = set(truth) | set(negatives)  # other shots of a scene are judged at the defaults only
    signals: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for signal, predictions in collected.predictions.items():
        predictions = [p for p in predictions if p.query in counted]
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
        overall = _shares(decided, positives)

        unrelated = _alarms(decided, queries, NEGATIVE)
        defaults[model] = {
            "recall_reject_or_review": overall["caught"],
            "recall_reject": overall["reject"],
            "review_share": overall["review"],
            "false_reviews": unrelated["reviews"],
            "false_rejects": unrelated["rejects"],
            "negatives": unrelated["queries"],
            "negatives_plain": _alarms(decided, queries, NEGATIVE, composite=False),
            "negatives_composite": _alarms(decided, queries, NEGATIVE, composite=True),
            "same_scene": _alarms(decided, queries, SCENE),
            "flagged_negatives": {
                q.id: [decided[q.id][0], *collected.flagged.get(model, {}).get(q.id, ("", 0.0))]
                for q in queries
                if not q.positive and q.id in decided and decided[q.id][0] != "accept"
            },
            "recall_by_family": {
                family: _shares(decided, [q for q in positives if q.family == family])["caught"]
                for family in sorted({q.family for q in positives})
            },
            "by_family": {
                family: _shares(decided, [q for q in positives if q.family == family])
                for family in sorted({q.family for q in positives}, key=_family_order)
            },
        }
    return {"signals": signals, "default_thresholds": defaults, "curves": curves}


def _alarms(
    decided: dict[str, tuple[str, bool]], queries: Sequence[Query], kind: str, composite: bool | None = None
) -> dict[str, int]:
    """Reviews and rejects among the queries of a kind (composites only, none of them, or all)."""
    chosen = [
        decided[q.id][0]
        for q in queries
        if q.kind == kind and q.id in decided and (composite is None or (q.family in COMPOSITE_FAMILIES) == composite)
    ]
    return {"queries": len(chosen), "reviews": chosen.count("review"), "rejects": chosen.count("reject")}


def _family_order(family: str) -> int:
    return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)


def measure_costs(pictures: Mapping[str, Sequence[bytes]], model: str) -> dict[str, Any]:
    """CPU milliseconds of a check's fingerprint (decode, hashes, every view embedded and hashed) in this
    process on one thread, for each kind of picture (plain photos, composites, ...), the kinds alternated so
    load hits them alike."""
    configure_threads(1)
    fingerprinter = Fingerprinter(ServerConfig().max_pixels, EmbedderPool(threads=1))
    fingerprinter.compute(next(iter(pictures.values()))[0], views=(model,))  # load the model before timing
    spent: dict[str, list[float]] = {kind: [] for kind in pictures}
    views: dict[str, list[int]] = {kind: [] for kind in pictures}
    for turn in zip(*pictures.values(), strict=False):
        for kind, data in zip(pictures, turn, strict=True):
            started = time.process_time()
            fingerprinted = fingerprinter.compute(data, views=(model,), view_hashes=True)
            spent[kind].append(1000.0 * (time.process_time() - started))
            views[kind].append(len(fingerprinted.views[model]))
    return {
        kind: {
            "checks": len(values),
            "mean_ms": float(np.mean(values)),
            "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)),
            "views_mean": float(np.mean(views[kind])),
        }
        for kind, values in spent.items()
        if values
    }


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
        scene = values["same_scene"]
        text.append(
            f"\nDefault thresholds, {model} list: caught (reject+review) {values['recall_reject_or_review']:.3f}, "
            f"reject {values['recall_reject']:.3f}, review share {values['review_share']:.3f}; "
            f"false reviews {values['false_reviews']}, false rejects {values['false_rejects']} of "
            f"{values['negatives']} unrelated negatives ({values['negatives_composite']['queries']} composites: "
            f"{values['negatives_composite']['reviews']} reviews, {values['negatives_composite']['rejects']} rejects); "
            f"other shots of listed scenes: {scene['rejects']} rejects, {scene['reviews']} reviews "
            f"of {scene['queries']}"
        )
    defaults = results["default_thresholds"]
    if defaults:
        columns = ["family"]
        for model in defaults:
            columns += [f"{model} caught", f"{model} reject", f"{model} review"]
        first = next(iter(defaults.values()))
        family_rows = []
        for family in first["by_family"]:
            row: dict[str, object] = {"family": family}
            for model, values in defaults.items():
                shares = values["by_family"][family]
                row.update({f"{model} caught": shares["caught"], f"{model} reject": shares["reject"]})
                row[f"{model} review"] = shares["review"]
            family_rows.append(row)
        all_row: dict[str, object] = {"family": "all"}
        for model, values in defaults.items():
            all_row.update(
                {f"{model} caught": values["recall_reject_or_review"], f"{model} reject": values["recall_reject"]}
            )
            all_row[f"{model} review"] = values["review_share"]
        family_rows.append(all_row)
        text.append(
            "\nAt the default thresholds, per family: caught, rejected, sent to review (shares of true copies):"
        )
        text.append(format_table(family_rows, columns))
    family_names = sorted({f for values in signals.values() for f in values.get("recall_by_family_at_fpr_1e-3", {})})
    family_rows = []
    for family in family_names:
        row = {"family": family}
        for name, values in signals.items():
            by_family = values.get("recall_by_family_at_fpr_1e-3") or values.get("recall_by_family", {})
            row[name] = by_family.get(family, float("nan"))
        family_rows.append(row)
    text.append("\nRecall per edit family (signals at their FPR 1e-3 threshold; pdq@31 at ≤ 31 bits):")
    text.append(format_table(family_rows, ["family", *signals]))
    costs = meta.get("costs")
    if costs:
        text.append("\nCPU of a check's fingerprint, one thread (ms):")
        text.append(
            format_table(
                [{"picture": kind, **{k: v for k, v in values.items()}} for kind, values in costs.items()],
                ["picture", "checks", "mean_ms", "p50_ms", "p99_ms", "views_mean"],
            )
        )
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
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated edit families")
    parser.add_argument("--models", default=f"{MODEL_SSCD_DISTILLED},{MODEL_SSCD}", help="lists to build, one a model")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for accuracy.json and accuracy.png")
    parser.add_argument(
        "--no-costs", action="store_true", help="skip the CPU cost of plain photos, composites and animations"
    )
    parser.add_argument("--details", action="store_true", help="also write each query's best matches' evidence")
    args = parser.parse_args(argv)

    photos = sorted(args.corpus.glob("*.jpg")) + sorted(args.corpus.glob("*.png"))
    if not photos:
        print(f"no photos in {args.corpus}; pass --corpus or set LOOKALIKE_CORPUS", file=sys.stderr)
        return 2
    if args.max_photos:
        photos = sorted(random.Random(args.seed).sample(photos, min(args.max_photos, len(photos))))
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")
    models = [m for m in args.models.split(",") if m]
    split = split_corpus(photos, args.seed, args.listed_share)
    others = OtherPhotos(split.distractors)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lookalike-accuracy-") as data:
        config = ServerConfig(listen="127.0.0.1:0", data=Path(data), map_size=1 << 32, http_listen="off")
        running = create_server(config)
        try:
            with LookalikeClient(f"127.0.0.1:{running.port}", timeout=600) as client:
                lists = {model: f"bench-{model}" for model in models}
                for model, name in lists.items():
                    client.create_list(name, model=model)
                originals: dict[str, Any] = {}
                for name in lists.values():
                    requests = (client_add_request(name, photo) for photo in split.listed)
                    for position, added in client.add_many(requests):
                        if isinstance(added, LookalikeError):
                            raise SystemExit(f"could not add {split.listed[position].name}: {added}")
                        originals[added.id] = added
                print(f"listed {len(split.listed)} originals in {len(lists)} lists", file=sys.stderr)
                scene_families = [f for f in SCENE_FAMILIES if f in families]
                queries = (
                    make_queries(split.listed, POSITIVE, families)
                    + make_queries(split.distractors, NEGATIVE, families)
                    + make_queries(split.scene, SCENE, scene_families)
                )
                truth = {q.id: q.source for q in queries if q.positive}
                print(f"checking {len(queries)} queries", file=sys.stderr)
                collected = run_checks(client, queries, args.seed, lists, originals, truth, others, args.details)
        finally:
            running.stop(grace=1)
    results = evaluate(collected, queries, truth)
    curves = results.pop("curves")
    costs: dict[str, Any] = {}
    if not args.no_costs:
        sample = random.Random(args.seed)
        kinds = {
            "composite": [q for q in queries if q.family in COMPOSITE_FAMILIES and q.family not in ANIMATED_FAMILIES],
            "animation": [q for q in queries if q.family in ANIMATED_FAMILIES],
        }
        pictures: dict[str, list[bytes]] = {
            "plain": [p.read_bytes() for p in sample.sample(photos, min(COST_SAMPLES, len(photos)))]
        }
        for kind, candidates in kinds.items():
            if candidates:
                chosen = sample.sample(candidates, min(COST_SAMPLES, len(candidates)))
                pictures[kind] = [edited_bytes(q, rgb_image(q.path), args.seed, others) for q in chosen]
        if len(pictures) > 1:
            costs = measure_costs(pictures, models[0])
    meta = {
        "corpus": str(args.corpus),
        "seed": args.seed,
        "families": families,
        "models": models,
        "default_model": DEFAULT_MODEL,
        "counts": {
            "listed": len(split.listed),
            "distractors": len(split.distractors),
            "scene_shots": len(split.scene),
            "positive_queries": sum(q.positive for q in queries),
            "negative_queries": sum(q.kind == NEGATIVE for q in queries),
            "scene_queries": sum(q.kind == SCENE for q in queries),
        },
        "costs": costs,
        "hardware": hardware(),
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    if args.details:
        (args.out / "accuracy_details.json").write_text(json.dumps(collected.details))
    plot_precision_recall(curves, args.out / "accuracy.png", f"Precision-recall, seed {args.seed}")
    print(report(results, meta))
    print(json.dumps({"meta": meta, **results}))
    return 0


def client_add_request(list_name: str, photo: Path) -> pb.AddEntryRequest:
    """A bulk-add request naming the entry after its file, so replies map back to photos."""
    return pb.AddEntryRequest(list=list_name, image=pb.Image(data=photo.read_bytes()), id=photo.name)


if __name__ == "__main__":
    raise SystemExit(main())

"""Accuracy metrics for the copy-detection benchmark, modelled on Meta's DISC21 evaluation.

DISC21 scores a matcher with micro-average precision (µAP): every (query, reference, score)
prediction of every query is pooled into one ranked list, so a matcher is rewarded for scores
that are comparable *across* queries -- exactly what a single disallow-list threshold needs.
Queries without a listed original only ever contribute false positives.

Plots are drawn with Pillow alone so the benchmark needs no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "Prediction",
    "best_scores",
    "format_table",
    "micro_average_precision",
    "plot_precision_recall",
    "precision_recall_curve",
    "recall_at",
    "threshold_at_fpr",
]


@dataclass(frozen=True)
class Prediction:
    """One candidate match: the matcher claims `query` copies `reference` with this score."""

    query: str  # query id
    reference: str  # reference (listed original) id
    score: float  # higher = more similar


def _dedupe(predictions: Sequence[Prediction]) -> list[Prediction]:
    """One prediction per (query, reference), keeping the highest score.

    A matcher that reports the same pair twice (say once per hash family) must not earn
    recall twice; the first occurrence's position is kept so tie order stays stable.
    """
    best: dict[tuple[str, str], Prediction] = {}
    for p in predictions:
        key = (p.query, p.reference)
        kept = best.get(key)
        if kept is None or p.score > kept.score:
            best[key] = p  # re-assigning keeps the key's original dict position
    return list(best.values())


def precision_recall_curve(
    predictions: Sequence[Prediction], ground_truth: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall after each prediction of the pooled, score-descending list.

    Returns (precision, recall, thresholds), one entry per deduplicated prediction:
    entry i describes accepting every prediction with rank <= i, i.e. score >= thresholds[i].
    Recall is over `len(ground_truth)` -- queries that have a listed original -- so missing
    predictions cost recall. Raises ValueError when there is no ground truth at all.
    """
    if not ground_truth:
        raise ValueError("ground_truth is empty: recall is undefined")
    preds = _dedupe(predictions)
    if not preds:
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty.copy(), empty.copy()
    scores = np.array([p.score for p in preds], dtype=np.float64)
    if np.isnan(scores).any():
        raise ValueError("prediction scores must not be NaN")
    correct = np.array([ground_truth.get(p.query) == p.reference for p in preds], dtype=bool)
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(correct[order])
    ranks = np.arange(1, len(preds) + 1)
    precision = hits / ranks
    recall = hits / len(ground_truth)
    return precision, recall, scores[order]


def micro_average_precision(predictions: Sequence[Prediction], ground_truth: Mapping[str, str]) -> float:
    """DISC21 µAP: sum of precision at each correct prediction's rank / number of ground-truth queries.

    Equivalent to the area under the pooled precision-recall curve (step interpolation), so a
    single mis-calibrated query with a high-scoring false positive drags every query down.
    """
    precision, recall, _ = precision_recall_curve(predictions, ground_truth)
    if precision.size == 0:
        return 0.0
    recall_gain = np.diff(recall, prepend=0.0)  # 1/len(gt) at correct ranks, 0 elsewhere
    return float(np.sum(precision * recall_gain))


def best_scores(predictions: Sequence[Prediction]) -> dict[str, float]:
    """Each query's highest score over all references.

    A disallow list acts on a query's best match, so false positives are counted per query
    (a negative query is flagged iff its best score clears the threshold).
    """
    best: dict[str, float] = {}
    for p in predictions:
        if p.query not in best or p.score > best[p.query]:
            best[p.query] = p.score
    return best


def threshold_at_fpr(negative_best: Sequence[float], fpr: float) -> float:
    """Smallest threshold t with share(negatives >= t) <= fpr, chosen among the negatives' scores.

    This is the loosest operating point that still meets a false-positive budget, which is
    what recall should be reported at. fpr=0 gives just above the largest negative score
    (np.nextafter(max, inf)); no negatives gives -inf (nothing can be a false positive).
    """
    if not 0.0 <= fpr <= 1.0 or math.isnan(fpr):
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    neg = np.sort(np.asarray(negative_best, dtype=np.float64))
    if neg.size == 0:
        return -math.inf
    if np.isnan(neg).any():
        raise ValueError("negative scores must not be NaN")
    allowed = math.floor(fpr * neg.size + 1e-9)  # tolerance: 0.1 * 10 must allow exactly 1
    candidates = np.unique(neg)
    at_or_above = neg.size - np.searchsorted(neg, candidates, side="left")
    ok = np.flatnonzero(at_or_above <= allowed)
    if ok.size:
        return float(candidates[ok[0]])
    return float(np.nextafter(neg[-1], math.inf))


def recall_at(positive_scores: Sequence[float], threshold: float) -> float:
    """Share of positive queries whose score is >= threshold (their copy would be caught).

    Raises ValueError for no positives, where recall is undefined rather than 0.
    """
    pos = np.asarray(positive_scores, dtype=np.float64)
    if pos.size == 0:
        raise ValueError("no positive scores: recall is undefined")
    return float(np.mean(pos >= threshold))


# ---------------------------------------------------------------------------------------------
# Plotting (Pillow only)

_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def plot_precision_recall(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """Write a 900x650 PNG with one precision-recall polyline per named curve.

    `curves` maps a legend name to (precision, recall) arrays, as returned by
    precision_recall_curve. The legend sits right of the axes so it never hides a curve.
    """
    width, height = 900, 650
    left, top, right, bottom = 80, 60, 660, 580  # plot area in pixels
    font = ImageFont.load_default(size=14)
    title_font = ImageFont.load_default(size=18)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def to_px(x: float, y: float) -> tuple[float, float]:
        x = min(max(x, 0.0), 1.0)
        y = min(max(y, 0.0), 1.0)
        return left + x * (right - left), bottom - y * (bottom - top)

    # Grid, ticks and tick labels every 0.1.
    for i in range(11):
        v = i / 10
        px, _ = to_px(v, 0.0)
        _, py = to_px(0.0, v)
        draw.line([(px, top), (px, bottom)], fill=(225, 225, 225))
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.line([(px, bottom), (px, bottom + 5)], fill="black")
        draw.line([(left - 5, py), (left, py)], fill="black")
        label = f"{v:.1f}"
        draw.text((px, bottom + 8), label, fill="black", font=font, anchor="mt")
        draw.text((left - 8, py), label, fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")

    # Axis labels and title.
    draw.text(((left + right) / 2, bottom + 32), "recall", fill="black", font=font, anchor="mt")
    ylabel = Image.new("RGBA", (120, 24), (255, 255, 255, 0))
    ImageDraw.Draw(ylabel).text((60, 12), "precision", fill="black", font=font, anchor="mm")
    ylabel = ylabel.rotate(90, expand=True)
    img.paste(ylabel, (8, int((top + bottom) / 2 - ylabel.height / 2)), ylabel)
    draw.text((width / 2, 20), title, fill="black", font=title_font, anchor="mt")

    # Curves and legend.
    legend_x, legend_y = right + 20, top
    for i, (name, (precision, recall)) in enumerate(curves.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        p = np.asarray(precision, dtype=np.float64)
        r = np.asarray(recall, dtype=np.float64)
        if p.shape != r.shape:
            raise ValueError(f"curve {name!r}: precision and recall differ in length")
        points = [to_px(float(x), float(y)) for x, y in zip(r, p, strict=True) if np.isfinite(x) and np.isfinite(y)]
        if len(points) >= 2:
            draw.line(points, fill=colour, width=2, joint="curve")
        elif points:
            (x, y) = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        y = legend_y + i * 22
        draw.rectangle([legend_x, y + 3, legend_x + 18, y + 13], fill=colour)
        text = name if len(name) <= 24 else name[:23] + "…"
        draw.text((legend_x + 26, y + 8), text, fill="black", font=font, anchor="lm")

    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# ---------------------------------------------------------------------------------------------
# Text tables


def _cell(value: object) -> str:
    """Floats get 3 decimals so columns of scores line up (3 significant digits when huge: a threshold
    just above scores of -inf is the most negative float); None shows as empty."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return f"{number:.3f}" if abs(number) < 1e6 else f"{number:.3g}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """A fixed-width text table (header, separator, rows) for benchmark reports and logs.

    Numeric columns are right-aligned so decimals line up; missing keys show as blank.
    """
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[j]) for r in cells)]) for j, c in enumerate(columns)]
    numeric = [
        any(c in row for row in rows) and all(_is_number(row[c]) for row in rows if row.get(c) is not None)
        for c in columns
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)

"""Hand-computed checks of the DISC21-style benchmark metrics, the PNG plot and the text table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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

GT = {"q1": "r1", "q2": "r2"}


def P(query: str, reference: str, score: float) -> Prediction:
    return Prediction(query, reference, score)


def test_perfect_ranking_is_one() -> None:
    preds = [P("q1", "r1", 0.9), P("q2", "r2", 0.8), P("q1", "r9", 0.1), P("q2", "r8", 0.05)]
    assert micro_average_precision(preds, GT) == pytest.approx(1.0)


def test_false_positive_ranked_first() -> None:
    # Pooled ranking: q1->r2 (wrong, 0.9), q1->r1 (right, 0.8), q2->r2 (right, 0.7).
    # Precision at the correct ranks: 1/2 at rank 2, 2/3 at rank 3.
    # µAP = (1/2 + 2/3) / len(GT)=2 = (7/6) / 2 = 7/12 ≈ 0.5833.
    preds = [P("q1", "r1", 0.8), P("q1", "r2", 0.9), P("q2", "r2", 0.7)]
    assert micro_average_precision(preds, GT) == pytest.approx(7 / 12)


def test_query_without_ground_truth_only_adds_false_positives() -> None:
    # q3 has no listed original, so its top-ranked prediction is wrong whatever the reference,
    # even the reference that is q1's true match: same 7/12 as above.
    preds = [P("q3", "r1", 0.9), P("q1", "r1", 0.8), P("q2", "r2", 0.7)]
    assert micro_average_precision(preds, GT) == pytest.approx(7 / 12)
    # Ranked below every correct prediction it costs nothing.
    preds = [P("q3", "r1", 0.1), P("q1", "r1", 0.8), P("q2", "r2", 0.7)]
    assert micro_average_precision(preds, GT) == pytest.approx(1.0)


def test_missing_prediction_costs_recall() -> None:
    # Only q1 is found: precision 1 at rank 1, divided by the 2 ground-truth queries.
    assert micro_average_precision([P("q1", "r1", 0.9)], GT) == pytest.approx(0.5)
    assert micro_average_precision([], GT) == 0.0


def test_duplicate_pairs_counted_once_with_highest_score() -> None:
    # After dedupe: q1->r1 0.9 (right), q2->rx 0.5 (wrong), q2->r2 0.4 (right).
    # µAP = (1/1 + 2/3) / 2 = 5/6. Counting the duplicate q1->r1 0.3 would exceed 1.
    preds = [P("q1", "r1", 0.3), P("q1", "r1", 0.9), P("q2", "rx", 0.5), P("q2", "r2", 0.4)]
    assert micro_average_precision(preds, GT) == pytest.approx(5 / 6)
    precision, recall, thresholds = precision_recall_curve(preds, GT)
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(thresholds, [0.9, 0.5, 0.4])


def test_ties_keep_input_order() -> None:
    gt = {"q1": "r1"}
    assert micro_average_precision([P("q9", "r1", 0.5), P("q1", "r1", 0.5)], gt) == pytest.approx(0.5)
    assert micro_average_precision([P("q1", "r1", 0.5), P("q9", "r1", 0.5)], gt) == pytest.approx(1.0)


def test_empty_ground_truth_is_an_error() -> None:
    with pytest.raises(ValueError):
        micro_average_precision([P("q1", "r1", 0.5)], {})


def test_best_scores() -> None:
    preds = [P("q1", "r1", 0.2), P("q1", "r2", 0.7), P("q2", "r1", -0.1)]
    assert best_scores(preds) == {"q1": 0.7, "q2": -0.1}


def test_threshold_at_fpr() -> None:
    negatives = [i / 10 for i in range(1, 11)]  # 0.1, 0.2, ..., 1.0
    assert threshold_at_fpr(negatives, 0.1) == 1.0  # only 1.0 is >= 1.0: 10 %
    assert threshold_at_fpr(negatives, 0.2) == 0.9
    zero = threshold_at_fpr(negatives, 0.0)
    assert zero == np.nextafter(1.0, math.inf) and zero > 1.0
    assert threshold_at_fpr(negatives, 1.0) == 0.1
    assert threshold_at_fpr([], 0.01) == -math.inf
    # Ties: 3 of 4 negatives sit at 0.5, so a 50 % budget can't stop at 0.5.
    assert threshold_at_fpr([0.5, 0.5, 0.5, 0.1], 0.5) == np.nextafter(0.5, math.inf)
    with pytest.raises(ValueError):
        threshold_at_fpr(negatives, 1.5)


def test_recall_at() -> None:
    assert recall_at([0.1, 0.5, 0.9, 1.0], 0.5) == 0.75
    assert recall_at([0.1, 0.5], 2.0) == 0.0
    assert recall_at([0.1, 0.5], -math.inf) == 1.0
    with pytest.raises(ValueError):
        recall_at([], 0.5)


def test_plot_writes_png(tmp_path: Path) -> None:
    precision, recall, _ = precision_recall_curve([P("q1", "r2", 0.9), P("q1", "r1", 0.8), P("q2", "r2", 0.7)], GT)
    out = tmp_path / "plots" / "pr.png"
    plot_precision_recall(
        {"sscd": (precision, recall), "pdq": (np.array([1.0]), np.array([0.5])), "empty": (np.zeros(0), np.zeros(0))},
        out,
        "precision-recall",
    )
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == (900, 650)
        colours = {c for _, c in img.convert("RGB").getcolors(maxcolors=1 << 20)}
    assert (31, 119, 180) in colours  # the first curve's colour was drawn


def test_format_table() -> None:
    rows = [
        {"method": "pdq", "uAP": 0.5, "queries": 1000},
        {"method": "sscd-disc", "uAP": 0.91234, "queries": 20},
    ]
    text = format_table(rows, ["method", "uAP", "queries"])
    lines = text.splitlines()
    assert len(lines) == 4
    for header in ("method", "uAP", "queries"):
        assert header in lines[0]
    assert set(lines[1]) <= {"-", " "}
    assert "0.500" in text and "0.912" in text and "0.91234" not in text
    # Right-aligned numeric columns: each value ends at the same offset on both rows.
    for top, bottom in (("0.500", "0.912"), ("1000", "20")):
        assert lines[2].index(top) + len(top) == lines[3].index(bottom) + len(bottom)
    assert lines[2].startswith("pdq ") and lines[3].startswith("sscd-disc")


def test_a_threshold_above_scores_of_minus_infinity_stays_one_short_cell() -> None:
    """A signal no negative reached (SHA-256) has its threshold at the most negative float."""
    threshold = threshold_at_fpr([-math.inf, -math.inf], 1e-3)
    assert threshold == -sys.float_info.max
    assert format_table([{"thr": threshold}], ["thr"]).splitlines()[2] == "-1.8e+308"

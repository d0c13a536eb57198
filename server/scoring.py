"""One calibrated score in [0, 1] from the evidence a match has.

Each signal is mapped to a score by a piecewise-linear curve read off the
accuracy benchmark (benchmarks/accuracy.py): the curve's knots say which raw
values unrelated photos never reach (score below the review threshold) and
which only edited copies reach (above reject). The fused score is the best of
the signals, raised when two independent signals agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.embedder import MODEL_SSCD, MODEL_SSCD_DISTILLED

DEFAULT_REVIEW_THRESHOLD = 0.5
DEFAULT_REJECT_THRESHOLD = 0.8
DEFAULT_MODEL = MODEL_SSCD_DISTILLED

PDQ_SEARCH_RADIUS = 63
"""PDQ candidates are looked up this far (bits); the curve decides what they are worth."""
PDQ_MIN_QUALITY = 50
"""Below this PDQ quality (flat, featureless pictures) a PDQ distance is not evidence."""


@dataclass(frozen=True)
class Curve:
    """Piecewise-linear map from a raw distance or similarity to a score."""

    xs: tuple[float, ...]
    scores: tuple[float, ...]

    def __call__(self, value: float) -> float:
        return float(np.interp(value, self.xs, self.scores))


# Read off benchmarks/explore_scores.py over the dev corpus (3648 negatives, 21 edit
# families): the best unrelated cosine stays below each curve's 0.5 knot, other
# shots of the same scene reach 0.89, so reject (0.8) needs a near-exact copy.
EMBEDDING_CURVES: dict[str, Curve] = {
    MODEL_SSCD: Curve((0.40, 0.55, 0.92, 0.98), (0.0, 0.5, 0.8, 1.0)),
    MODEL_SSCD_DISTILLED: Curve((0.45, 0.62, 0.92, 0.98), (0.0, 0.5, 0.8, 1.0)),
}
# Unrelated photos never came closer than 88 bits, other shots of one scene 64.
PDQ_CURVE = Curve((0.0, 31.0, 50.0, 70.0), (1.0, 0.8, 0.5, 0.0))


@dataclass(frozen=True)
class Evidence:
    """The raw facts behind one match."""

    exact_sha256: bool = False
    pdq_distance: int | None = None
    pdq_quality: int = 0  # the lower of the query's and the entry's
    embedding_similarity: float | None = None
    model: str = ""

    def signals(self) -> list[str]:
        found = []
        if self.exact_sha256:
            found.append("sha256")
        if self.pdq_distance is not None and self.pdq_quality >= PDQ_MIN_QUALITY and PDQ_CURVE(self.pdq_distance) > 0:
            found.append("pdq")
        if self.embedding_similarity is not None and self.model in EMBEDDING_CURVES:
            if EMBEDDING_CURVES[self.model](self.embedding_similarity) > 0:
                found.append("embedding")
        return found


def score(evidence: Evidence) -> float:
    """The fused score: 1 for the same bytes, else the strongest signal, boosted by agreement."""
    if evidence.exact_sha256:
        return 1.0
    scores = []
    if evidence.pdq_distance is not None and evidence.pdq_quality >= PDQ_MIN_QUALITY:
        scores.append(PDQ_CURVE(evidence.pdq_distance))
    if evidence.embedding_similarity is not None and evidence.model in EMBEDDING_CURVES:
        scores.append(EMBEDDING_CURVES[evidence.model](evidence.embedding_similarity))
    if not scores:
        return 0.0
    best = max(scores)
    return float(min(1.0, best))

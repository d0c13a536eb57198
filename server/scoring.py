"""One calibrated score in [0, 1] from the evidence a match has.

Each signal is mapped to a score by a piecewise-linear curve read off the
accuracy benchmark (benchmarks/accuracy.py): the curve's knots say which raw
values unrelated photos never reach (score below the review threshold) and
which only edited copies reach (above reject). The fused score is the best of
the signals, raised (noisy-OR) when PDQ and the embedding both reach review level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lookalike.server.embedder import MODEL_SSCD, MODEL_SSCD_DISTILLED
from lookalike.server.fingerprint import WHOLE, Place

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


# Knots from benchmarks/accuracy.py over the whole dev corpus (docs/tuning.md, Matching):
# review (0.5) sits above where unrelated photos' best cosine ends, with a margin for
# unseen data; reject (0.8) above other shots of one scene (cosine up to 0.89), so
# an automatic reject needs a near-exact copy or PDQ and embedding agreeing. Below
# the review knot the curves keep rising gently so scores still rank candidates.
EMBEDDING_CURVES: dict[str, Curve] = {
    MODEL_SSCD: Curve((0.0, 0.30, 0.47, 0.92, 0.98), (0.0, 0.1, 0.5, 0.8, 1.0)),
    MODEL_SSCD_DISTILLED: Curve((0.0, 0.35, 0.50, 0.92, 0.98), (0.0, 0.1, 0.5, 0.8, 1.0)),
}
# Unrelated photos never came closer than 88 bits, other shots of one scene 64.
PDQ_CURVE = Curve((0.0, 31.0, 50.0, 70.0, 128.0), (1.0, 0.8, 0.5, 0.1, 0.0))
KEYPOINTS_CURVE = Curve((15.0, 60.0), (0.55, 0.7))
"""Keypoints agreeing under one transform (from 15, `server/keypoints.py`) send a match to review and rank it
by their count, never to reject: other shots of a scene agree too, as the ORB study found (docs/tuning.md)."""
AGREEMENT_LEVEL = 0.5
"""Two independent signals that each reach this level corroborate each other."""


@dataclass(frozen=True)
class Evidence:
    """The raw facts behind one match."""

    exact_sha256: bool = False
    pdq_distance: int | None = None
    pdq_quality: int = 0  # the lower of the query's and the entry's
    embedding_similarity: float | None = None
    model: str = ""
    exact_md5: bool = False
    phash_distance: int | None = None  # in the query's orientation nearest the entry's; None when one has none
    keypoints_agreeing: int = 0  # the query's keypoints landing on the entry's; 0 when not looked at or too few
    pdq_place: Place | None = None
    """The view of the query the PDQ (and pHash) distance is of; None where the query had no views (by hashes)."""
    embedding_place: Place | None = None
    """The view of the query nearest the entry's embedding; None likewise."""

    @property
    def pdq_in_view(self) -> bool:
        """Whether the PDQ distance is of a view beyond the whole picture: a picture found inside it, a frame."""
        return self.pdq_place is not None and self.pdq_place.kind != WHOLE

    def signal_scores(self) -> dict[str, float]:
        """Each usable signal's own calibrated score."""
        scores = {}
        if self.pdq_distance is not None and self.pdq_quality >= PDQ_MIN_QUALITY:
            scores["pdq"] = PDQ_CURVE(self.pdq_distance)
        if self.embedding_similarity is not None and self.model in EMBEDDING_CURVES:
            scores["embedding"] = EMBEDDING_CURVES[self.model](self.embedding_similarity)
        if self.keypoints_agreeing:
            scores["keypoints"] = KEYPOINTS_CURVE(self.keypoints_agreeing)
        return scores

    def signals(self) -> list[str]:
        """The signals that, alone, reach review level, after the exact digest match if any (SHA-256
        rather than MD5 when both say "the same bytes")."""
        found = ["sha256"] if self.exact_sha256 else ["md5"] if self.exact_md5 else []
        return found + [name for name, value in self.signal_scores().items() if value >= AGREEMENT_LEVEL]


PDQ_SAME_PICTURE = 6
"""PDQ distances (bits) up to this say the pixels are the listed picture's (re-encoded, resized, recoloured)."""
PDQ_SAME_SCENE = 31
"""Distances above PDQ_SAME_PICTURE and up to this (HMA's match bound) are also what other shots of one
scene give (frames of a video, a second photo from one spot): the layout is the listed picture's, the
pixels may not be. There a reject also needs pHash within PHASH_SAME_PICTURE; copies that change the
layout (crops, turns, composites) go further and are judged by the embedding."""
PHASH_SAME_PICTURE = 0
"""pHash distance (of 64 bits) that, with PDQ in the same-scene band, still says the same picture: the
video frames and the castle pair of the benchmark differ by 2 bits or more."""
EMBEDDING_ALONE_REJECT = 0.93
"""Cosine a reject needs when PDQ does not place the picture within PDQ_SAME_SCENE."""


def may_reject(evidence: Evidence) -> bool:
    """Whether the evidence can carry an automatic reject, whatever the score: the same bytes, or a
    picture whose signals say copy rather than another shot of the scene. An entry without an embedding
    is judged by PDQ alone, as a hash list asks; otherwise PDQ in the same-scene band without pHash's
    support, or a cosine under EMBEDDING_ALONE_REJECT without PDQ's, leaves the match to a person. A view's
    PDQ (a picture found inside the query) may carry a reject as the whole picture's does, but never holds
    one back: its box is only nearly the picture's, so its pHash seldom agrees to the bit, and the
    embedding judged views alone before they were hashed."""
    if evidence.exact_sha256 or evidence.exact_md5 or evidence.embedding_similarity is None:
        return True
    pdq = evidence.pdq_distance if evidence.pdq_quality >= PDQ_MIN_QUALITY else None
    if pdq is not None and pdq <= PDQ_SAME_PICTURE:
        return True
    if pdq is not None and pdq <= PDQ_SAME_SCENE:
        if evidence.phash_distance is not None and evidence.phash_distance <= PHASH_SAME_PICTURE:
            return True
        if not evidence.pdq_in_view:
            return False
    return evidence.embedding_similarity >= EMBEDDING_ALONE_REJECT


def score(evidence: Evidence) -> float:
    """The fused score: 1 for the same bytes (by SHA-256 or MD5), else the strongest signal,
    PDQ and the embedding boosted by their agreement. An entry without an embedding scores on PDQ's
    curve alone, the same scale, so hash-only entries and picture entries rank and decide alike."""
    if evidence.exact_sha256 or evidence.exact_md5:
        return 1.0
    scores = evidence.signal_scores()
    keypoints = scores.pop("keypoints", 0.0)
    both = list(scores.values())
    if len(both) == 2 and min(both) >= AGREEMENT_LEVEL:
        # Independent evidence agreeing: combine as a noisy-OR.
        return float(1.0 - (1.0 - both[0]) * (1.0 - both[1]))
    return float(max(*both, keypoints, 0.0))

"""The fused score: calibrated per signal, exact copies at 1, agreement rewarded, weak PDQ ignored."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lookalike.server.fingerprint import PART, Place
from lookalike.server.scoring import (
    DEFAULT_REJECT_THRESHOLD,
    DEFAULT_REVIEW_THRESHOLD,
    EMBEDDING_ALONE_REJECT,
    EMBEDDING_CURVES,
    PDQ_CURVE,
    PDQ_MIN_QUALITY,
    PDQ_SAME_PICTURE,
    PDQ_SAME_SCENE,
    PHASH_SAME_PICTURE,
    Curve,
    Evidence,
    may_reject,
    score,
)

MODEL = "sscd-distilled"


def test_the_same_bytes_score_one_whatever_else_says() -> None:
    assert score(Evidence(exact_sha256=True, pdq_distance=200, pdq_quality=100, embedding_similarity=0.0)) == 1.0


@pytest.mark.parametrize("curve", [*EMBEDDING_CURVES.values()])
def test_embedding_curves_rise_with_similarity_and_stay_in_range(curve: Curve) -> None:
    values = [curve(x) for x in np.linspace(-1, 1, 201)]
    assert values == sorted(values) and 0.0 <= min(values) and max(values) <= 1.0


def test_pdq_curve_falls_with_distance() -> None:
    values = [PDQ_CURVE(d) for d in range(257)]
    assert values == sorted(values, reverse=True) and values[0] == 1.0 and values[-1] == 0.0
    assert PDQ_CURVE(31) >= DEFAULT_REJECT_THRESHOLD  # HMA's match threshold rejects on its own


def test_scores_are_calibrated_to_the_default_thresholds() -> None:
    unrelated = Evidence(pdq_distance=120, pdq_quality=100, embedding_similarity=0.30, model=MODEL)
    edited = Evidence(pdq_distance=110, pdq_quality=100, embedding_similarity=0.75, model=MODEL)
    near_exact = Evidence(pdq_distance=4, pdq_quality=100, embedding_similarity=0.97, model=MODEL)
    assert score(unrelated) < DEFAULT_REVIEW_THRESHOLD
    assert DEFAULT_REVIEW_THRESHOLD <= score(edited) < DEFAULT_REJECT_THRESHOLD
    assert score(near_exact) >= DEFAULT_REJECT_THRESHOLD


def test_two_signals_at_review_level_corroborate_each_other() -> None:
    alone = Evidence(pdq_distance=120, pdq_quality=100, embedding_similarity=0.70, model=MODEL)
    agreeing = Evidence(pdq_distance=45, pdq_quality=100, embedding_similarity=0.70, model=MODEL)
    assert score(agreeing) > score(alone)
    assert score(agreeing) == pytest.approx(1 - (1 - PDQ_CURVE(45)) * (1 - EMBEDDING_CURVES[MODEL](0.70)))
    assert agreeing.signals() == ["pdq", "embedding"] and alone.signals() == ["embedding"]


def test_a_low_quality_pdq_hash_is_not_evidence() -> None:
    weak = Evidence(pdq_distance=0, pdq_quality=PDQ_MIN_QUALITY - 1)
    assert score(weak) == 0.0 and weak.signals() == []


def test_a_reject_needs_evidence_of_a_copy_rather_than_of_another_shot() -> None:
    another_shot = Evidence(
        pdq_distance=PDQ_SAME_SCENE, pdq_quality=100, embedding_similarity=0.97, model=MODEL, phash_distance=2
    )
    assert score(another_shot) >= DEFAULT_REJECT_THRESHOLD and not may_reject(another_shot)
    assert not may_reject(replace(another_shot, phash_distance=None))
    assert may_reject(replace(another_shot, phash_distance=PHASH_SAME_PICTURE))  # recoloured, captioned
    re_encoded = Evidence(pdq_distance=PDQ_SAME_PICTURE, pdq_quality=100, embedding_similarity=0.97, model=MODEL)
    assert may_reject(re_encoded)
    cropped = Evidence(pdq_distance=120, pdq_quality=100, embedding_similarity=EMBEDDING_ALONE_REJECT, model=MODEL)
    assert may_reject(cropped)
    assert not may_reject(replace(cropped, embedding_similarity=EMBEDDING_ALONE_REJECT - 0.01))
    assert may_reject(Evidence(exact_sha256=True, pdq_distance=PDQ_SAME_SCENE, pdq_quality=100))


def test_a_views_pdq_carries_a_reject_as_a_whole_pictures_does_but_never_holds_one_back() -> None:
    """A picture found inside the query (a paste, a frame) is hashed too: within PDQ_SAME_PICTURE, or in the
    same-scene band with its own pHash agreeing, it rejects; in the band with its pHash off (its box is only
    nearly the picture's) the embedding decides, as it did for views before they were hashed."""
    pasted = Evidence(pdq_distance=18, pdq_quality=100, embedding_similarity=0.96, model=MODEL, phash_distance=6)
    assert not may_reject(pasted)  # the whole picture this close: maybe another shot of the scene
    in_view = replace(pasted, pdq_place=Place(PART, (40, 60, 840, 660)))
    assert may_reject(in_view)
    assert not may_reject(replace(in_view, embedding_similarity=EMBEDDING_ALONE_REJECT - 0.01))
    assert may_reject(replace(in_view, embedding_similarity=0.6, phash_distance=PHASH_SAME_PICTURE))
    assert may_reject(replace(in_view, embedding_similarity=0.6, pdq_distance=PDQ_SAME_PICTURE))


def test_hash_only_entries_still_reject_on_pdq_alone() -> None:
    """Hash lists (no embedding) keep HMA's rule: PDQ within 31 bits rejects."""
    hashed = Evidence(pdq_distance=31, pdq_quality=100)
    assert score(hashed) >= DEFAULT_REJECT_THRESHOLD and may_reject(hashed)


def test_agreeing_keypoints_send_an_unsure_match_to_review_and_never_to_reject() -> None:
    unsure = Evidence(embedding_similarity=0.40, model=MODEL)
    assert score(unsure) < DEFAULT_REVIEW_THRESHOLD and unsure.signals() == []
    for agreeing in (15, 60, 1000):
        confirmed = replace(unsure, keypoints_agreeing=agreeing)
        assert DEFAULT_REVIEW_THRESHOLD < score(confirmed) < DEFAULT_REJECT_THRESHOLD
        assert confirmed.signals() == ["keypoints"] and not may_reject(confirmed)
    assert score(replace(unsure, keypoints_agreeing=60)) > score(replace(unsure, keypoints_agreeing=15))

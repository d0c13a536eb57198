"""The accuracy benchmark: a sound split, and a small end-to-end run through the real service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.accuracy import is_copy_pair, main, near_duplicate_pairs, series_key, split_corpus
from benchmarks.verify_pixels import THUMBNAIL_SIDE, block_agreement, grey_thumbnail
from tests.conftest import corpus_photos, near_duplicate_groups


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("opencv__data__left01.jpg", "pypi_mvtb__calibration__right10.jpg"),
        ("opencv__data__aloeL.jpg", "opencv__data__aloeR.jpg"),
        ("opencv__data__ela_modified.jpg", "opencv__data__ela_original.jpg"),
        ("pypi_mvtb__campus__P1070491.jpg", "pypi_mvtb__campus__holdout__P1070492.jpg"),
    ],
)
def test_photos_of_one_series_share_a_key(a: str, b: str) -> None:
    assert series_key(a) == series_key(b)


def test_different_pictures_get_different_keys() -> None:
    assert series_key("kalzium__brenner.jpg") != series_key("kalzium__trichter.jpg")


def test_split_is_seeded_and_keeps_near_duplicates_and_series_on_one_side() -> None:
    photos = corpus_photos()
    split = split_corpus(photos, seed=0, listed_share=0.6)
    listed, distractors = split.listed, split.distractors
    assert split == split_corpus(photos, seed=0, listed_share=0.6)
    assert split_corpus(photos, seed=1, listed_share=0.6).listed != listed
    assert len(listed) + len(distractors) + len(split.scene) == len(photos)
    assert 0.55 < len(listed) / len(photos) < 0.7
    side = {p.name: p in listed or p in split.scene for p in photos}
    for group in near_duplicate_groups():
        assert len({side[name] for name in group if name in side}) <= 1, group
    by_series: dict[str, set[bool]] = {}
    for photo in photos:
        by_series.setdefault(series_key(photo.name), set()).add(side[photo.name])
    assert all(len(sides) == 1 for sides in by_series.values())


def test_other_shots_of_a_scene_are_held_back_beside_a_listed_shot_and_copies_are_not() -> None:
    photos = corpus_photos()
    split = split_corpus(photos, seed=0, listed_share=0.6)
    held_back = {p.name for p in split.scene}
    listed = {p.name for p in split.listed}
    pairs = near_duplicate_pairs(photos)
    scene_pairs = [(a, b) for a, b, evidence in pairs if not is_copy_pair(a, b, evidence)]
    assert scene_pairs and held_back
    assert ("pypi_mvtb__mosaic__aerial-08.jpg", "pypi_mvtb__mosaic__aerialphoto.jpg") in scene_pairs  # same_scene.tsv
    for name in held_back:  # every held-back shot has a listed shot of its scene
        assert any({name, other} == {a, b} and other in listed for a, b in scene_pairs for other in (a, b))
    copies = [(a, b) for a, b, evidence in pairs if is_copy_pair(a, b, evidence)]
    assert ("opencv__dnn_superres__butterfly.jpg", "pypi_sporco__monarch.jpg") in copies
    assert not held_back & {name for pair in copies for name in pair}


def test_a_small_run_reports_every_signal_and_draws_the_curves(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus" / "dev"
    corpus.mkdir(parents=True)
    for photo in corpus_photos()[::40][:8]:
        (corpus / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    families = ["resize_jpeg", "flip_h", "collage_2x2"]
    code = main(
        ["--corpus", str(corpus), "--families", ",".join(families), "--models", "sscd-distilled", "--out", str(out)]
    )
    assert code == 0
    report = json.loads((out / "accuracy.json").read_text())
    assert set(report["signals"]) >= {"pdq", "pdq@31", "phash", "sscd-distilled", "fused:sscd-distilled"}
    fused = report["signals"]["fused:sscd-distilled"]
    assert 0.0 <= fused["micro_ap"] <= 1.0 and set(fused["recall_by_family_at_fpr_1e-3"]) == set(families)
    defaults = report["default_thresholds"]["sscd-distilled"]
    assert defaults["negatives"] == report["meta"]["counts"]["negative_queries"] > 0
    assert defaults["negatives_composite"]["queries"] == report["meta"]["counts"]["distractors"]
    assert list(defaults["by_family"]) == families
    for shares in defaults["by_family"].values():
        assert set(shares) == {"caught", "reject", "review"}
        assert 0.0 <= shares["reject"] <= shares["caught"] <= 1.0 and 0.0 <= shares["review"] <= 1.0
    costs = report["meta"]["costs"]
    assert costs["plain"]["checks"] == costs["composite"]["checks"] > 0 and costs["plain"]["mean_ms"] > 0
    with Image.open(out / "accuracy.png") as plot:
        assert plot.format == "PNG"


def test_pixel_verification_counts_a_copy_as_agreeing_in_place_and_a_moved_part_as_shifted() -> None:
    """benchmarks/verify_pixels.py's block statistic (issue #18's measurement), on a real photo: the
    picture itself agrees everywhere in place; a part moved by 3 px agrees only shifted."""
    with Image.open(corpus_photos()[0]) as image:
        entry = grey_thumbnail(image, THUMBNAIL_SIDE).astype(np.float32)
    inside = np.ones(entry.shape, bool)
    still, moved, blocks = block_agreement(entry, entry.copy(), inside)
    assert blocks > 0 and still == 1.0 and moved == 0
    shifted = entry.copy()
    half = entry.shape[1] // 2
    shifted[:, half:] = np.roll(entry, 3, axis=1)[:, half:]
    still, moved, _ = block_agreement(entry, shifted, inside)
    assert moved > 0 and still < 1.0

"""The accuracy benchmark: a sound split, and a small end-to-end run through the real service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.accuracy import main, series_key, split_corpus
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
    listed, distractors = split_corpus(photos, seed=0, listed_share=0.6)
    assert (listed, distractors) == split_corpus(photos, seed=0, listed_share=0.6)
    assert split_corpus(photos, seed=1, listed_share=0.6)[0] != listed
    assert len(listed) + len(distractors) == len(photos)
    assert 0.55 < len(listed) / len(photos) < 0.7
    side = {p.name: p in listed for p in photos}
    for group in near_duplicate_groups():
        assert len({side[name] for name in group if name in side}) <= 1, group
    by_series: dict[str, set[bool]] = {}
    for photo in photos:
        by_series.setdefault(series_key(photo.name), set()).add(side[photo.name])
    assert all(len(sides) == 1 for sides in by_series.values())


def test_a_small_run_reports_every_signal_and_draws_the_curves(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus" / "dev"
    corpus.mkdir(parents=True)
    for photo in corpus_photos()[::40][:8]:
        (corpus / photo.name).write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    code = main(
        ["--corpus", str(corpus), "--families", "resize_jpeg,flip_h", "--models", "sscd-distilled", "--out", str(out)]
    )
    assert code == 0
    report = json.loads((out / "accuracy.json").read_text())
    assert set(report["signals"]) >= {"pdq", "pdq@31", "phash", "sscd-distilled", "fused:sscd-distilled"}
    fused = report["signals"]["fused:sscd-distilled"]
    assert 0.0 <= fused["micro_ap"] <= 1.0 and set(fused["recall_by_family_at_fpr_1e-3"]) == {"resize_jpeg", "flip_h"}
    defaults = report["default_thresholds"]["sscd-distilled"]
    assert defaults["negatives"] == report["meta"]["counts"]["negative_queries"] > 0
    with Image.open(out / "accuracy.png") as plot:
        assert plot.format == "PNG"

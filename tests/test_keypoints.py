"""Keypoints confirm a copy the embedding is unsure of (issue #18): a heavy crop of a listed photo, whose
embedding falls short of review, goes to review because its keypoints land on the entry's; unrelated photos'
keypoints do not, and keypoints never reject. Real server, real photos, the benchmark's own edits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.edits import apply_edit, encode_edited
from lookalike.client.types import CheckResult
from lookalike.server.keypoints import MIN_AGREEING, agreeing_keypoints, entry_keypoints, query_keypoints
from lookalike.server.storage.schema import DB_KEYPOINTS
from lookalike.server.verify import verify
from tests.conftest import ServerHandle, distinct_photos, start_server


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def kept(lookalike: ServerHandle) -> int:
    """Keypoints stored, every list's."""
    store = lookalike.running.service.store
    with store.env.begin() as txn:
        return int(txn.stat(store.environment.db(DB_KEYPOINTS))["entries"])


def by_keypoints_alone(result: CheckResult) -> bool:
    return result.decision == "review" and tuple(result.matches[0].evidence.signals) == ("keypoints",)


def no_other_photos(rng: random.Random) -> Image.Image:
    raise AssertionError("a crop needs no other photo")


def test_a_crop_agrees_with_its_own_photo_and_not_with_another() -> None:
    photo, other = (rgb(path) for path in distinct_photos(2, seed=5))
    width, height = photo.size
    crop = photo.crop((width // 4, height // 4, width * 3 // 4, height * 3 // 4))
    assert agreeing_keypoints(query_keypoints(crop), entry_keypoints(photo)) >= MIN_AGREEING
    assert agreeing_keypoints(query_keypoints(crop), entry_keypoints(other)) == 0
    assert agreeing_keypoints(b"not keypoints", entry_keypoints(photo)) == 0


def test_a_few_keypoints_agreeing_by_chance_count_as_none() -> None:
    pictures = [rgb(path) for path in distinct_photos(8, seed=9)]
    kept = [entry_keypoints(picture) for picture in pictures]
    for picture in pictures:
        found = query_keypoints(picture)
        counts = [agreeing_keypoints(found, entry) for entry in kept]
        assert all(count == 0 or count >= MIN_AGREEING for count in counts), counts


@pytest.mark.slow
def test_heavy_crops_the_embedding_misses_go_to_review_by_their_keypoints(lookalike: ServerHandle) -> None:
    photos = distinct_photos(40, seed=3)
    listed, unlisted = photos[:24], photos[24:]
    client = lookalike.client
    client.create_list("banned")
    ids = {path.name: client.add("banned", path).id for path in listed}
    by_keypoints = 0
    for seed, path in enumerate(listed):
        crop = encode_edited(apply_edit("crop_70", rgb(path), random.Random(seed), no_other_photos))
        result = client.check(crop, ["banned"])
        assert result.decision != "reject" or "keypoints" not in result.matches[0].evidence.signals
        if by_keypoints_alone(result):
            assert result.matches[0].id == ids[path.name]
            by_keypoints += 1
    assert by_keypoints >= 2, "no heavy crop was confirmed by keypoints alone"
    for path in unlisted:  # (a chessboard may meet another shot of its board through the embedding)
        matches = client.check(path, ["banned"], top_k=3).matches
        assert not any("keypoints" in match.evidence.signals for match in matches), path.name


@pytest.mark.slow
def test_picture_entries_keep_keypoints_until_removed_with_the_entry_or_the_list(tmp_path: Path) -> None:
    lookalike = start_server(tmp_path / "data")
    try:
        client = lookalike.client
        client.create_list("banned")
        ids = [client.add("banned", path).id for path in distinct_photos(3, seed=4)]
        client.add_hash("banned", client.hash_entry(pdq="f0" * 32, pdq_quality=90))  # no picture, no keypoints
        assert kept(lookalike) == 3
        client.remove("banned", ids[0])
        assert kept(lookalike) == 2
        client.delete_list("banned")
        assert kept(lookalike) == 0
    finally:
        lookalike.stop()
    assert verify(tmp_path / "data").problems == []


@pytest.mark.slow
def test_a_list_may_keep_no_keypoints_and_its_checks_then_compare_none(lookalike: ServerHandle) -> None:
    client = lookalike.client
    photos = distinct_photos(16, seed=3)
    assert client.create_list("banned").keypoints
    assert not client.create_list("lean", keypoints=False).keypoints
    for path in photos[:15]:
        client.add("banned", path)
        client.add("lean", path)
    assert kept(lookalike) == 15  # the lean list's entries keep none
    crops = [
        encode_edited(apply_edit("crop_70", rgb(path), random.Random(seed), no_other_photos))
        for seed, path in enumerate(photos[:15])
    ]
    confirmed = [crop for crop in crops if by_keypoints_alone(client.check(crop, ["banned"]))]
    assert confirmed, "no heavy crop was confirmed by keypoints alone"
    for crop in confirmed:
        assert client.check(crop, ["lean"]).decision == "accept"

    assert not client.update_list("banned", keypoints=False).keypoints  # deletes those kept
    assert kept(lookalike) == 0
    assert all(client.check(crop, ["banned"]).decision == "accept" for crop in confirmed)
    assert client.update_list("banned", keypoints=True).keypoints  # only pictures added from now on
    client.add("banned", photos[15])
    assert kept(lookalike) == 1

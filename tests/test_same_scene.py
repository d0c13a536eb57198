"""Another shot of a listed scene is not a copy: consecutive video frames, a stereo pair and two
photos of one building, end to end on a real server with real corpus photos. They may go to
review (a person tells them apart); an automatic reject would take down a picture nobody listed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.conftest import CORPUS, ServerHandle, corpus_photos, distinct_photos

SCENE_PAIRS = (
    ("opencv__data__rubberwhale1.jpg", "opencv__data__rubberwhale2.jpg"),  # video frames
    ("opencv__data__basketball1.jpg", "opencv__data__basketball2.jpg"),  # video frames
    ("opencv__data__aloeL.jpg", "opencv__data__aloeR.jpg"),  # stereo pair
    ("pypi_mvtb__castle.jpg", "pypi_mvtb__castle2.jpg"),  # two shots of one castle
)
"""(listed shot, other shot) pairs of NEAR_DUPLICATES.tsv whose scores (cosines 0.82-0.99, PDQ 8-22 bits
for three of them) reach the reject threshold: rejected before a reject needed evidence of a copy
(`scoring.may_reject`)."""


@pytest.mark.slow
def test_another_shot_of_a_listed_scene_is_never_rejected(lookalike: ServerHandle) -> None:
    corpus_photos()  # skips without the corpus
    client = lookalike.client
    client.create_list("banned")
    for listed, _ in SCENE_PAIRS:
        client.add("banned", CORPUS / listed)
    decisions = {}
    for _, other in SCENE_PAIRS:
        decisions[other] = client.check(CORPUS / other, ["banned"]).decision
        with Image.open(CORPUS / other) as image:
            buffer = io.BytesIO()
            image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, "JPEG", quality=90)
        decisions[f"{other}, mirrored"] = client.check(buffer.getvalue(), ["banned"]).decision
    assert "reject" not in decisions.values(), decisions


@pytest.mark.slow
def test_a_re_encoded_copy_of_a_listed_shot_is_still_rejected(lookalike: ServerHandle) -> None:
    """The same pixels, resized and saved again as JPEG: PDQ within a few bits and the same pHash."""
    corpus_photos()
    client = lookalike.client
    client.create_list("banned")
    decisions = {}
    for listed, _ in SCENE_PAIRS:
        client.add("banned", CORPUS / listed)
        with Image.open(CORPUS / listed) as image:
            picture = image.convert("RGB")
        smaller = picture.resize((picture.width * 3 // 4, picture.height * 3 // 4), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        smaller.save(buffer, "JPEG", quality=80)
        decisions[listed] = client.check(buffer.getvalue(), ["banned"]).decision
    assert set(decisions.values()) == {"reject"}, decisions


@pytest.mark.slow
def test_a_mirrored_or_turned_re_encode_is_rejected_as_the_picture_itself_would_be(lookalike: ServerHandle) -> None:
    """PDQ finds a turned copy through its rotations and mirrors; pHash, the copy's evidence when PDQ is in
    the same-scene band, is compared in the same orientation, so the turn alone does not send it to review."""
    photos = distinct_photos(8, seed=31)
    client = lookalike.client
    client.create_list("banned")
    in_band = []
    for path in photos:
        client.add("banned", path, id=path.stem)
        with Image.open(path) as image:
            picture = image.convert("RGB")
        for turn in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90):
            turned = picture.transpose(turn)
            buffer = io.BytesIO()
            turned.resize((turned.width * 3 // 4, turned.height * 3 // 4), Image.Resampling.LANCZOS).save(
                buffer, "JPEG", quality=80
            )
            match = client.check(buffer.getvalue(), ["banned"]).matches[0]
            assert (match.id, match.decision) == (path.stem, "reject"), (path.name, turn, match)
            in_band.append(match.evidence.pdq_distance is not None and match.evidence.pdq_distance > 6)
    assert sum(in_band) >= 3  # rejected on PDQ's same-scene band with pHash, not on PDQ alone

"""Another shot of a listed scene is not a copy: consecutive video frames, a stereo pair and two
photos of one building, end to end on a real server with real corpus photos. They may go to
review (a person tells them apart); an automatic reject would take down a picture nobody listed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.conftest import CORPUS, ServerHandle, corpus_photos

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
    decisions = {other: client.check(CORPUS / other, ["banned"]).decision for _, other in SCENE_PAIRS}
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

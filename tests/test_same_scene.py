"""Another shot of a listed scene is not a copy: consecutive video frames, a stereo pair and two
photos of one building, end to end on a real server with real corpus photos. They may go to
review (a person tells them apart); an automatic reject would take down a picture nobody listed."""

from __future__ import annotations

import pytest

from tests.conftest import CORPUS, ServerHandle, corpus_photos

SCENE_PAIRS = (
    ("opencv__data__rubberwhale1.jpg", "opencv__data__rubberwhale2.jpg"),  # video frames
    ("opencv__data__basketball1.jpg", "opencv__data__basketball2.jpg"),  # video frames
    ("opencv__data__aloeL.jpg", "opencv__data__aloeR.jpg"),  # stereo pair
    ("pypi_mvtb__castle.jpg", "pypi_mvtb__castle2.jpg"),  # two shots of one castle
)
"""(listed shot, other shot) pairs of NEAR_DUPLICATES.tsv whose cosines (0.93-0.99) and PDQ made
rejects before decisions asked for agreement between the signals."""


@pytest.mark.slow
def test_another_shot_of_a_listed_scene_is_never_rejected(lookalike: ServerHandle) -> None:
    corpus_photos()  # skips without the corpus
    client = lookalike.client
    client.create_list("banned")
    for listed, _ in SCENE_PAIRS:
        client.add("banned", CORPUS / listed)
    decisions = {other: client.check(CORPUS / other, ["banned"]).decision for _, other in SCENE_PAIRS}
    assert "reject" not in decisions.values(), decisions

"""Near-duplicates of listed photos are caught, unrelated photos pass, and it all survives restarts.

Real photos from the dev corpus, real edits, the real SSCD model, a real server.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.edits import EDIT_FAMILIES, encode_edited
from lookalike.server.embedder import MODEL_SSCD_DISTILLED, EmbedderPool
from lookalike.server.fingerprint import Fingerprinter
from tests.conftest import ServerHandle, distinct_photos

ISSUE_EDITS = ("resize_jpeg", "crop_30", "flip_h", "colour_jitter", "text_caption")
"""The edits the service must catch at its default thresholds: resize + JPEG, crop, flip, colour, text."""


def edited(path: Path, family: str, seed: int) -> bytes:
    with Image.open(path) as image:
        picture = image.convert("RGB")
    return encode_edited(EDIT_FAMILIES[family](picture, random.Random(seed)))


@pytest.fixture(scope="module")
def split() -> tuple[list[Path], list[Path]]:
    photos = distinct_photos(24, seed=7)
    return photos[:12], photos[12:]


def test_preprocessing_puts_edited_copies_far_above_unrelated_photos(split: tuple[list[Path], list[Path]]) -> None:
    """The embedding sees an edited copy as much closer than any other photo."""
    listed, unrelated = split
    fingerprinter = Fingerprinter(64_000_000, EmbedderPool())

    def embed(data: bytes) -> np.ndarray:
        return fingerprinter.embedding(fingerprinter.fingerprint(data), MODEL_SSCD_DISTILLED)

    originals = np.stack([embed(p.read_bytes()) for p in listed])
    copies = [
        float(embed(edited(path, family, seed)) @ originals[i])
        for i, path in enumerate(listed)
        for seed, family in enumerate(ISSUE_EDITS)
    ]
    strangers = [float(s) for p in unrelated for s in originals @ embed(p.read_bytes())]
    assert min(copies) > max(strangers) + 0.1, (min(copies), max(strangers))
    assert np.median(copies) > 0.7 > 0.35 > max(strangers)


@pytest.mark.slow
def test_edits_of_listed_photos_are_flagged_and_unrelated_photos_accepted_across_restarts(
    lookalike: ServerHandle, split: tuple[list[Path], list[Path]]
) -> None:
    listed, unrelated = split
    client = lookalike.client
    client.create_list("banned")
    ids = {}
    for path in listed:
        ids[path.name] = client.add("banned", path, meta={"file": path.name}).id

    queries = [(path, family, edited(path, family, seed)) for seed, family in enumerate(ISSUE_EDITS) for path in listed]
    strangers = [
        (path, family, edited(path, family, seed)) for seed, family in enumerate(ISSUE_EDITS) for path in unrelated
    ]
    strangers += [(path, "original", path.read_bytes()) for path in unrelated]

    def verdicts() -> tuple[list[str], list[str]]:
        caught = []
        for path, family, data in queries:
            result = client.check(data, ["banned"])
            assert result.decision in ("reject", "review"), (path.name, family, result.matches[:1])
            assert result.matches[0].id == ids[path.name], (path.name, family)
            assert result.matches[0].meta == {"file": path.name}
            caught.append(result.decision)
        passed = []
        for path, family, data in strangers:
            result = client.check(data, ["banned"])
            assert result.decision == "accept", (path.name, family, result.matches[:1])
            passed.append(result.decision)
        return caught, passed

    before = verdicts()
    lookalike.restart()  # graceful: indexes come back from their snapshot
    client = lookalike.client
    assert client.get_list("banned").entry_count == len(listed)
    assert verdicts() == before


def test_a_listed_photo_pasted_small_into_a_screenshot_is_flagged(
    lookalike: ServerHandle, split: tuple[list[Path], list[Path]]
) -> None:
    """The region inside the canvas is embedded too, so a screenshot of a listed photo matches it."""
    listed, unrelated = split
    client = lookalike.client
    client.create_list("banned")
    added = {client.add("banned", path).id: path for path in listed[:4]}
    for seed, (entry_id, path) in enumerate(added.items()):
        result = client.check(edited(path, "screenshot", seed), ["banned"])
        assert result.decision in ("reject", "review"), (path.name, result.matches[:1])
        assert result.matches[0].id == entry_id
    for seed, path in enumerate(unrelated[:4]):
        assert client.check(edited(path, "screenshot", seed), ["banned"]).decision == "accept", path.name

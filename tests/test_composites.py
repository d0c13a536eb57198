"""Copies inside other pictures, end to end on a real server with real photos: a listed picture in a
collage or beside another, pasted onto another photo or on a screen photographed at an angle is found;
composites of unlisted photos are accepted."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from benchmarks.edits import Others, apply_edit, encode_edited
from lookalike.client import LookalikeClient
from lookalike.server.regions import overlap
from tests.conftest import ServerHandle, distinct_photos
from tests.test_regions import (
    BACKGROUNDS,
    EDGE_PLACES,
    backdrop,
    picture_at_edge,
    print_turned_on,
    screen_cut_off,
    two_pictures,
)


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def others_from(paths: list[Path]) -> Others:
    pictures = [rgb(path) for path in paths]
    return lambda rng: rng.choice(pictures)


def found_on_top(client: LookalikeClient, picture: Image.Image, entry_id: str) -> bool:
    """Whether a check of `picture` against "banned" flags it (reject or review) with `entry_id` on top."""
    result = client.check(encode_edited(picture), ["banned"])
    return result.decision != "accept" and result.matches[0].id == entry_id


def listed_as_banned(client: LookalikeClient, listed: list[Path]) -> dict[str, str]:
    """A list "banned" holding the photos; each photo's entry id by file name."""
    client.create_list("banned")
    return {path.name: client.add("banned", path).id for path in listed}


def listed_as_pdq_hashes(client: LookalikeClient, listed: list[Path]) -> list[str]:
    """A list "shared" holding only the photos' PDQ hashes, as platforms share them (taken from a picture list
    "pictures" of the same photos); each photo's entry id, in order."""
    client.create_list("pictures")
    client.create_list("shared")
    ids = [client.add("pictures", path).id for path in listed]
    for entry in client.export_entries("pictures"):
        hashes = entry.hashes
        client.add_hash("shared", client.hash_entry(pdq=hashes.pdq, pdq_quality=hashes.pdq_quality, id=entry.id))
    return ids


def found_each(
    client: LookalikeClient, listed: list[Path], composites: Callable[[int, Image.Image], Iterable[Image.Image]]
) -> list[bool]:
    """With the photos listed in "banned", whether each composite of each photo (made from its number and
    its picture) is flagged with that photo's entry on top."""
    ids = listed_as_banned(client, listed)
    return [
        found_on_top(client, composite, ids[path.name])
        for number, path in enumerate(listed)
        for composite in composites(number, rgb(path))
    ]


@pytest.fixture(scope="module")
def photos() -> tuple[list[Path], list[Path]]:
    chosen = distinct_photos(12, seed=11)
    return chosen[:4], chosen[4:]


@pytest.mark.slow
def test_a_listed_picture_inside_a_collage_or_pasted_on_a_photo_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    listed, unlisted = photos
    client = lookalike.client
    ids = listed_as_banned(client, listed)
    others = others_from(unlisted)
    caught: dict[str, list[bool]] = {}
    for family in ("collage_2x2", "collage_3x3", "paste_on_photo", "paste_on_busy"):
        for seed, path in enumerate(listed):
            edited = apply_edit(family, rgb(path), random.Random(seed), others)
            caught.setdefault(family, []).append(found_on_top(client, edited, ids[path.name]))
    assert all(caught["collage_2x2"]) and all(caught["collage_3x3"]), caught
    assert sum(caught["paste_on_photo"] + caught["paste_on_busy"]) >= 4, caught


@pytest.mark.slow
def test_a_listed_picture_pasted_small_on_a_photo_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """At a fifth to three tenths of the photo's side the pasted picture's sides are short, and part of one
    often meets the photo in the same grey: 6 of these 12 are found today (7 with 16 candidate lines a
    direction, 6 when a line had to run an eighth of the image's side too; the benchmark's paste_small family
    measures it on the whole corpus, where 24 lines find 12 more of 236)."""
    listed, unlisted = photos
    others = others_from(unlisted)
    found = found_each(
        lookalike.client,
        listed,
        lambda number, picture: (
            apply_edit("paste_small", picture, random.Random(100 + 3 * number + k), others) for k in range(3)
        ),
    )
    assert sum(found) >= 5, found


@pytest.mark.slow
def test_a_listed_picture_on_a_photographed_screen_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """Screens photographed at an angle: the rectified screen is searched as a view of its own. The
    benchmark catches about three in four on the tuning seed (one in eight without); here at least
    five of eight (one without)."""
    listed, unlisted = photos
    others = others_from(unlisted)

    def screen_photos(number: int, picture: Image.Image) -> Iterator[Image.Image]:
        for seed in range(2):
            yield apply_edit("screen_photo", picture, random.Random(10 * seed + number), others)

    caught = found_each(lookalike.client, listed, screen_photos)
    assert sum(caught) >= 5, caught


@pytest.mark.slow
def test_a_listed_picture_on_a_screen_the_photo_cuts_off_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """A phone's photo of a screen often cuts the screen off: three sides of the bezel show and the photo's
    edge stands for the fourth. Cut off on each of its four sides, each listed picture is found on top, at
    least 15 of the 16 times (13 when the finder took no edge for a side)."""
    listed, unlisted = photos

    def cut_off(number: int, picture: Image.Image) -> Iterator[Image.Image]:
        for turns in range(4):
            yield screen_cut_off(picture, rgb(unlisted[number]), turns)[0]

    caught = found_each(lookalike.client, listed, cut_off)
    assert sum(caught) >= 15, caught


@pytest.mark.slow
def test_a_listed_picture_beside_or_above_another_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """Two pictures cropped square side by side or stacked (a before-and-after post): the pair is cut in
    two and each half searched. Each listed picture, first or second, is found on top at least 15 of
    the 16 times (16 now; 12 before pairs were cut)."""
    listed, unlisted = photos

    def pairs(number: int, picture: Image.Image) -> Iterator[Image.Image]:
        other = rgb(unlisted[number])
        for stacked in (False, True):
            for pictures in ((picture, other), (other, picture)):
                yield two_pictures(*pictures, stacked=stacked, gutter=8 * number % 16)[0]

    caught = found_each(lookalike.client, listed, pairs)
    assert sum(caught) >= 15, caught


@pytest.mark.slow
def test_a_listed_picture_in_a_corner_or_cut_off_by_the_photos_edge_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """Pasted in a corner of another photo, or partly outside it, the picture has two or three sides of its
    own and the photo's edge closes its frame. Each listed picture in each of four places: found on top at
    least 7 of the 16 times (9 today, where a backdrop's own rectangles do not outrank it; 2 when a frame
    needed four sides on lines)."""
    listed, unlisted = photos

    def at_edge(number: int, picture: Image.Image) -> Iterator[Image.Image]:
        for place in EDGE_PLACES:
            yield picture_at_edge(picture, backdrop(unlisted[number].name), place)[0]

    caught = found_each(lookalike.client, listed, at_edge)
    assert sum(caught) >= 7, caught


@pytest.mark.slow
def test_a_listed_picture_laid_turned_as_a_print_on_a_photo_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """A print with a white border, turned 5-20° on another photo: its four sides make a true rectangle,
    which is set upright and searched. Each listed picture at four angles on four colourful photos: found on
    top at least 11 of the 16 times (13 today; 3 when only screens were looked for). On pale or grey
    photos, where the white border hardly stands out, far fewer are (4 of 16 on this module's unlisted
    photos)."""
    listed, _ = photos

    def turned(number: int, picture: Image.Image) -> Iterator[Image.Image]:
        for angle, background in zip((-15, -7, 9, 18), BACKGROUNDS, strict=True):
            yield print_turned_on(picture, backdrop(background), angle + number)[0]

    caught = found_each(lookalike.client, listed, turned)
    assert sum(caught) >= 11, caught


@pytest.mark.slow
def test_composites_of_unlisted_photos_are_accepted(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    listed, unlisted = photos
    client = lookalike.client
    listed_as_banned(client, listed)
    others = others_from(unlisted[4:])
    for family in (
        "collage_2x2",
        "collage_3x3",
        "pair",
        "paste_on_photo",
        "paste_on_busy",
        "paste_at_edge",
        "paste_turned",
        "paste_small",
        "app_screenshot",
        "screen_photo",
    ):
        for seed, path in enumerate(unlisted[:4]):
            query = encode_edited(apply_edit(family, rgb(path), random.Random(seed), others))
            result = client.check(query, ["banned"])
            assert result.decision == "accept", (family, path.name, result.matches[:1])
    for turns, path in enumerate(unlisted[:4]):
        composite, _ = screen_cut_off(rgb(path), rgb(unlisted[4 + turns]), turns)
        result = client.check(encode_edited(composite), ["banned"])
        assert result.decision == "accept", ("screen cut off", path.name, result.matches[:1])
        composite, _ = picture_at_edge(rgb(path), backdrop(unlisted[4 + turns].name), EDGE_PLACES[turns])
        result = client.check(encode_edited(composite), ["banned"])
        assert result.decision == "accept", (EDGE_PLACES[turns], path.name, result.matches[:1])
        composite, _ = print_turned_on(rgb(path), backdrop(unlisted[4 + turns].name), 9 - 6 * turns)
        result = client.check(encode_edited(composite), ["banned"])
        assert result.decision == "accept", ("print turned", path.name, result.matches[:1])


@pytest.mark.slow
def test_a_listed_picture_turned_on_a_fill_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    listed, _ = photos
    client = lookalike.client
    ids = listed_as_banned(client, listed)
    for angle, path in zip((-28, -19, 22, 30), listed, strict=True):
        turned = rgb(path).rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(250, 250, 250))
        result = client.check(encode_edited(turned), ["banned"])
        assert result.decision != "accept" and result.matches[0].id == ids[path.name], (path.name, angle)


@pytest.mark.slow
def test_a_listed_picture_pasted_large_on_a_photo_can_be_rejected(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """The best frame is embedded at the model's input size, where a pasted copy can reach the cosine that
    rejects on its own (0.93; half of these pastes, none when frames were embedded at 224 pixels). The match
    says where the copy lies when it was found inside the upload (12 of these 16 today; else on the whole)."""
    listed, unlisted = photos
    client = lookalike.client
    ids = listed_as_banned(client, listed)
    decisions, placed = [], []
    for background in unlisted[4:]:
        for path in listed:
            canvas = rgb(background).resize((1200, 800), Image.Resampling.BICUBIC)
            pasted = ImageOps.contain(rgb(path), (780, 520), Image.Resampling.LANCZOS)
            canvas.paste(pasted, (300, 160))
            result = client.check(encode_edited(canvas), ["banned"])
            assert result.decision != "accept" and result.matches[0].id == ids[path.name], (path.name, background.name)
            decisions.append(result.decision)
            found_in = result.matches[0].evidence.embedding_view
            assert found_in is not None and found_in.kind in ("part", "whole")
            if found_in.kind == "part":
                box = found_in.box
                found = (box.x, box.y, box.x + box.width, box.y + box.height)
                placed.append(overlap(found, (300, 160, 300 + pasted.width, 160 + pasted.height)))
    assert decisions.count("reject") >= 5, decisions
    assert len(placed) >= 8 and min(placed) >= 0.8, placed


@pytest.mark.slow
def test_a_list_of_pdq_hashes_finds_a_picture_pasted_on_a_photo(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """The pictures found inside a check are PDQ-hashed too, so a list of hashes alone, as platforms share
    them, finds a copy pasted on a photo: at least 4 of these 8 today (5; none when only the whole picture
    was hashed). The same photos without a paste are accepted."""
    listed, unlisted = photos
    client = lookalike.client
    ids = listed_as_pdq_hashes(client, listed)
    found = []
    for background in unlisted[4:6]:
        canvas = rgb(background).resize((1200, 800), Image.Resampling.BICUBIC)
        assert client.check(encode_edited(canvas), ["shared"]).decision == "accept", background.name
        for path, entry_id in zip(listed, ids, strict=True):
            pasted = canvas.copy()
            pasted.paste(ImageOps.contain(rgb(path), (780, 520), Image.Resampling.LANCZOS), (300, 160))
            result = client.check(encode_edited(pasted), ["shared"])
            found.append(result.decision != "accept" and result.matches[0].id == entry_id)
    assert sum(found) >= 4, found


@pytest.mark.slow
def test_a_composite_turned_as_a_whole_is_searched_set_upright(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """A listed picture pasted on a photo, the whole then turned a few degrees on a fill: the pasted
    picture's edges turn with it, so its frame is looked for in the composite set upright (on the
    tuning seed chain_composite went from 0.716 to 0.746 caught)."""
    listed, unlisted = photos
    client = lookalike.client
    ids = listed_as_banned(client, listed)
    others = others_from(unlisted)
    caught = []
    for family in ("paste_on_photo", "paste_on_busy"):
        for seed in range(2):
            for number, path in enumerate(listed):
                rng = random.Random(10 * seed + number)
                turned = apply_edit("rotate_small", apply_edit(family, rgb(path), rng, others), rng)
                caught.append(found_on_top(client, turned, ids[path.name]))
    assert sum(caught) >= 7, caught  # 10 of these 16; 1 when only the whole was set upright

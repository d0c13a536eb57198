"""Animated uploads, end to end on a real server with real photos: a listed picture shown for a moment
inside an animated GIF or WebP is found, whatever the first frame shows; animations of unlisted photos
are accepted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from lookalike.client import Box, View
from tests.conftest import ServerHandle, distinct_photos
from tests.test_composites import listed_as_banned, listed_as_pdq_hashes

FRAME_SIZE = (480, 360)


def frame_of(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB").resize(FRAME_SIZE)


def animation(frames: list[Image.Image], image_format: str) -> bytes:
    """An animation of `frames`, a third of a second each, as a GIF (256 colours a frame) or a lossy WebP."""
    options = {"quality": 80} if image_format == "WEBP" else {}
    buffer = io.BytesIO()
    frames[0].save(buffer, image_format, save_all=True, append_images=frames[1:], duration=300, loop=0, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos() -> tuple[list[Path], list[Path]]:
    chosen = distinct_photos(10, seed=53)
    return chosen[:3], chosen[3:]


def test_a_listed_picture_shown_for_a_moment_inside_an_animation_is_found(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """Each listed picture as one frame among five unlisted ones, at the second, fourth or last place, in a
    GIF and in a WebP: flagged with its entry on top every time, the match saying which frame it is in. The
    first frame alone (what an entry keeps) would be accepted."""
    listed, unlisted = photos
    client = lookalike.client
    ids = listed_as_banned(client, listed)
    for number, path in enumerate(listed):
        frames = [frame_of(other) for other in unlisted[number : number + 5]]
        shown_at = (1, 3, 5)[number]
        frames.insert(shown_at, frame_of(path))
        assert client.check(animation(frames[:1], "GIF"), ["banned"]).decision == "accept"
        for image_format in ("GIF", "WEBP"):
            result = client.check(animation(frames, image_format), ["banned"])
            assert result.decision != "accept" and result.matches[0].id == ids[path.name], (path.name, image_format)
            found_in = result.matches[0].evidence.embedding_view
            assert found_in == View("frame", Box(0, 0, *FRAME_SIZE), shown_at)


def test_animations_of_unlisted_photos_are_accepted(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    listed, unlisted = photos
    client = lookalike.client
    listed_as_banned(client, listed)
    for image_format in ("GIF", "WEBP"):
        result = client.check(animation([frame_of(path) for path in unlisted], image_format), ["banned"])
        assert result.decision == "accept", (image_format, result.matches[:1])


def test_a_pdq_list_finds_a_listed_picture_inside_an_animation(
    lookalike: ServerHandle, photos: tuple[list[Path], list[Path]]
) -> None:
    """A list of PDQ hashes alone, as platforms share them: the frame showing the picture matches its hash
    as the picture itself would, behind a black title frame (whose PDQ is no evidence) too; the animation
    without that frame does not."""
    listed, unlisted = photos
    client = lookalike.client
    (entry_id,) = listed_as_pdq_hashes(client, listed[:1])

    frames = [frame_of(path) for path in unlisted[:4]]
    title = Image.new("RGB", FRAME_SIZE)
    for image_format, opening in (("GIF", frames[:2]), ("WEBP", [title, *frames[:1]])):
        result = client.check(animation([*opening, frame_of(listed[0]), *frames[2:]], image_format), ["shared"])
        assert result.decision == "reject" and result.matches[0].id == entry_id, (image_format, result.matches)
        assert result.matches[0].evidence.pdq_distance is not None and result.matches[0].evidence.pdq_distance <= 31
        assert client.check(animation(frames, image_format), ["shared"]).decision == "accept"

"""server.imaging.decode_image on pictures made in memory with Pillow, and on hostile bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike.client.errors import InvalidArgument, LookalikeError, ResourceExhausted
from lookalike.server.imaging import (
    DRAFT_SHORT_SIDE,
    FRAME_READ_PIXELS,
    MAX_FRAME_VIEWS,
    MAX_FRAMES_READ,
    decode_image,
)

MAX_PIXELS = 50_000_000
RED, GREEN, BLUE, WHITE = (220, 20, 30), (20, 200, 40), (30, 40, 210), (255, 255, 255)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB picture, so lossy formats stay close to it."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, axis=1)
    return Image.fromarray(np.dstack([x, y, 255 - x]).astype(np.uint8), "RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def assert_rgb8(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size
    assert np.asarray(image).dtype == np.uint8


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def jpeg_with_exif(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


# Formats -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "options", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 12),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 20),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("AVIF", {"quality": 90}, 20),
        ("HEIF", {"quality": 90}, 20),
    ],
    ids=["jpeg", "png", "webp-lossless", "webp-lossy", "bmp", "tiff", "tiff-lzw", "avif", "heic"],
)
def test_common_formats_decode_to_the_same_rgb_picture(image_format: str, options: dict, tolerance: int) -> None:
    original = gradient()
    decoded = decode_image(encode(original, image_format, **options), MAX_PIXELS)
    assert decoded.format == image_format
    assert decoded.original_size == (64, 48)
    assert_rgb8(decoded.rgb, (64, 48))
    assert np.abs(pixels(decoded.rgb) - pixels(original)).mean() <= max(tolerance / 3, 0.01)
    assert np.abs(pixels(decoded.rgb) - pixels(original)).max() <= max(tolerance * 4, 0)


def test_a_gif_decodes_to_rgb_with_its_palette_colours() -> None:
    original = Image.new("RGB", (30, 20), GREEN)
    decoded = decode_image(encode(original, "GIF"), MAX_PIXELS)
    assert decoded.format == "GIF"
    assert_rgb8(decoded.rgb, (30, 20))
    assert np.abs(pixels(decoded.rgb) - np.array(GREEN)).max() <= 8


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 3

    decoded = decode_image(data, MAX_PIXELS)

    assert_rgb8(decoded.rgb, (32, 24))
    assert np.abs(pixels(decoded.rgb) - np.array(RED)).max() <= 8


def test_an_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 24), colour) for colour in (BLUE, RED)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    decoded = decode_image(data, MAX_PIXELS)
    assert np.abs(pixels(decoded.rgb) - np.array(BLUE)).max() <= 2


def test_a_multi_page_tiff_gives_its_first_page() -> None:
    pages = [Image.new("RGB", (16, 16), colour) for colour in (GREEN, RED)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert (pixels(decode_image(data, MAX_PIXELS).rgb) == np.array(GREEN)).all()


def animated(frames: list[Image.Image], image_format: str = "GIF") -> bytes:
    return encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, loop=0)


def colour_of(frame: Image.Image) -> tuple[int, ...]:
    return tuple(int(round(v)) for v in pixels(frame).reshape(-1, 3).mean(axis=0))


def test_an_animations_other_frames_are_those_showing_something_else_in_order() -> None:
    """The first frame is what the picture is; of the others, a check looks at those that differ from it and
    from each other: not a repeat, nor a frame a few levels lighter."""
    lighter_red = tuple(min(255, v + 6) for v in RED)
    colours = [RED, lighter_red, GREEN, RED, BLUE, GREEN]
    data = animated([Image.new("RGB", (64, 48), colour) for colour in colours])
    decoded = decode_image(data, MAX_PIXELS)

    assert np.abs(pixels(decoded.rgb) - np.array(RED)).max() <= 8
    frames = decoded.other_frames
    assert [colour_of(frame) for frame in frames] == [GREEN, BLUE]
    assert all(frame.size == (64, 48) and frame.mode == "RGB" for frame in frames)


def test_an_animations_frames_are_turned_and_scaled_as_its_first_is() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [red_left_end(800, 400), Image.new("RGB", (800, 400), BLUE)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True, exif=exif.tobytes())
    decoded = decode_image(data, MAX_PIXELS)
    assert_left_end_on_top(decoded.rgb)
    (other,) = decoded.other_frames
    assert other.size == decoded.rgb.size == (DRAFT_SHORT_SIDE, 2 * DRAFT_SHORT_SIDE)


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_pages_and_apng_frames_count_too(image_format: str) -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in (GREEN, RED)]
    assert [colour_of(f) for f in decode_image(animated(frames, image_format), MAX_PIXELS).other_frames] == [RED]


def test_a_still_picture_and_a_phones_mpo_have_no_other_frames() -> None:
    assert decode_image(encode(gradient(), "JPEG"), MAX_PIXELS).other_frames == []
    mpo = encode(gradient(), "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48), BLUE)])
    decoded = decode_image(mpo, MAX_PIXELS)
    assert decoded.format == "MPO" and decoded.other_frames == []


def test_a_long_slideshow_gives_its_most_distinct_frames_read_from_its_start() -> None:
    """Twelve greys 20 levels apart, shown in turn, then white past the frames read: MAX_FRAME_VIEWS frames,
    no repeat among them, not the first frame's grey, nothing from beyond MAX_FRAMES_READ."""
    palette = [(level, level, level) for level in range(10, 240, 20)]
    colours = [palette[i % 12] for i in range(MAX_FRAMES_READ)] + [WHITE]
    frames = decode_image(animated([Image.new("RGB", (8, 8), c) for c in colours]), MAX_PIXELS).other_frames
    shown = [colour_of(frame) for frame in frames]
    assert len(shown) == MAX_FRAME_VIEWS and len(set(shown)) == MAX_FRAME_VIEWS
    assert WHITE not in shown and palette[0] not in shown


def test_a_large_animation_is_read_up_to_its_pixel_budget() -> None:
    """500×500 frames: the first FRAME_READ_PIXELS of them (64) are read, so a frame shown after them is not.
    Each frame has a dot of its own (an encoder merges identical frames)."""
    side = 500
    assert FRAME_READ_PIXELS // (side * side) == 64
    frames = []
    for number in range(100):
        frame = Image.new("RGB", (side, side), GREEN if number == 10 else BLUE if number == 80 else RED)
        frame.putpixel((number, number), WHITE)
        frames.append(frame)
    other = decode_image(animated(frames), MAX_PIXELS).other_frames
    assert [colour_of(frame) for frame in other] == [GREEN]


def test_a_damaged_later_frame_ends_the_frames_read() -> None:
    """The first frame decodes, so the check goes on; frames after the damage are not looked at."""
    data = animated([Image.new("RGB", (64, 48), colour) for colour in (RED, GREEN, BLUE)])
    cut = data[: data.rindex(b"\x2c")] + b"\x2c\x00\x00"  # the third frame's descriptor, cut short
    decoded = decode_image(cut, MAX_PIXELS)
    assert [colour_of(frame) for frame in decoded.other_frames] == [GREEN]


# Orientation -----------------------------------------------------------------------------


def red_left_end(width: int = 40, height: int = 20) -> Image.Image:
    picture = Image.new("RGB", (width, height), WHITE)
    picture.paste(Image.new("RGB", (width // 4, height), RED), (0, 0))
    return picture


def assert_left_end_on_top(decoded: Image.Image) -> None:
    """Orientation 6 means "rotate 90° clockwise to display": the left end goes to the top."""
    top, bottom = pixels(decoded)[: decoded.height // 5], pixels(decoded)[-decoded.height // 5 :]
    assert np.abs(top - np.array(RED)).mean() < 20
    assert np.abs(bottom - np.array(WHITE)).mean() < 20


def test_exif_orientation_6_rotates_a_40x20_jpeg_to_20x40() -> None:
    decoded = decode_image(jpeg_with_exif(red_left_end(), 6), MAX_PIXELS)

    assert decoded.original_size == (40, 20)
    assert_rgb8(decoded.rgb, (20, 40))
    assert_left_end_on_top(decoded.rgb)


@pytest.mark.parametrize("image_format", ["AVIF", "HEIF"])
def test_a_phone_photo_in_avif_or_heic_is_turned_once(image_format: str) -> None:
    """Both store the turn in the container (irot/imir) rather than in EXIF: Pillow reports an AVIF's as
    its EXIF orientation, libheif applies a HEIC's itself. Either way the picture is turned once."""
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(red_left_end(80, 40), image_format, quality=90, exif=exif.tobytes()), MAX_PIXELS)
    assert_rgb8(decoded.rgb, (40, 80))
    assert_left_end_on_top(decoded.rgb)


@pytest.mark.parametrize(("orientation", "size"), [(1, (40, 20)), (3, (40, 20)), (8, (20, 40)), (5, (20, 40))])
def test_other_exif_orientations_are_applied(orientation: int, size: tuple[int, int]) -> None:
    decoded = decode_image(jpeg_with_exif(gradient(40, 20), orientation), MAX_PIXELS)
    assert_rgb8(decoded.rgb, size)


def test_exif_orientation_is_applied_to_png_too() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(gradient(40, 20), "PNG", exif=exif), MAX_PIXELS)
    assert decoded.rgb.size == (20, 40)


# Transparency and odd modes ------------------------------------------------------------------


def test_transparent_rgba_pixels_are_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (20, 10), (*RED, 255))
    rgba.paste(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), (10, 0))  # right half: transparent black
    half = Image.new("RGBA", (20, 10), (0, 0, 0, 128))  # half-transparent black

    decoded = decode_image(encode(rgba, "PNG"), MAX_PIXELS).rgb
    assert_rgb8(decoded, (20, 10))
    assert (pixels(decoded)[:, :10] == np.array(RED)).all()
    assert (pixels(decoded)[:, 10:] == 255).all()
    grey = pixels(decode_image(encode(half, "PNG"), MAX_PIXELS).rgb)
    assert (np.abs(grey - 127) <= 1).all()


def test_a_transparent_webp_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    decoded = decode_image(encode(rgba, "WEBP", lossless=True), MAX_PIXELS).rgb
    assert (pixels(decoded) == 255).all()


def test_a_palette_png_with_a_transparent_index_is_flattened_onto_white() -> None:
    palette_image = Image.new("P", (20, 10), 0)
    palette_image.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    palette_image.paste(1, (10, 0, 20, 10))  # right half: index 1, which is transparent
    data = encode(palette_image, "PNG", transparency=1)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "P" and "transparency" in check.info

    decoded = decode_image(data, MAX_PIXELS).rgb

    assert_rgb8(decoded, (20, 10))
    assert (pixels(decoded)[:, :10] == np.array(RED)).all()
    assert (pixels(decoded)[:, 10:] == 255).all()


def test_a_gif_with_a_transparent_colour_is_flattened_onto_white() -> None:
    palette_image = Image.new("P", (8, 8), 1)
    palette_image.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    decoded = decode_image(encode(palette_image, "GIF", transparency=1), MAX_PIXELS).rgb
    assert (pixels(decoded) == 255).all()


def test_a_cmyk_jpeg_decodes_to_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    data = encode(cmyk, "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"

    decoded = decode_image(data, MAX_PIXELS).rgb

    assert_rgb8(decoded, (32, 32))
    r, g, b = pixels(decoded).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 50 and b < 50


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (0, 0), (32768, 128), (256, 1)])
def test_a_16_bit_grayscale_png_is_scaled_to_8_bits(value: int, expected: int) -> None:
    image = Image.new("I;16", (10, 6), value)
    data = encode(image, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode.startswith("I")  # really read back as 16-bit

    decoded = decode_image(data, MAX_PIXELS).rgb

    assert_rgb8(decoded, (10, 6))
    assert (np.abs(pixels(decoded) - expected) <= 1).all()


def test_a_16_bit_grayscale_gradient_keeps_its_order() -> None:
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)[None, :].repeat(4, axis=0)
    decoded = pixels(decode_image(encode(Image.fromarray(ramp), "PNG"), MAX_PIXELS).rgb)
    row = decoded[0, :, 0]
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all()
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


def test_a_16_bit_rgb_png_decodes_to_8_bits() -> None:
    # Pillow writes RGB as 8-bit; craft a 16-bit-per-channel PNG by hand.
    width, height = 4, 2
    row = b"\x00" + struct.pack(">HHH", 65535, 0, 32768) * width
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )
    decoded = decode_image(data, MAX_PIXELS).rgb
    assert_rgb8(decoded, (4, 2))
    assert (np.abs(pixels(decoded) - np.array([255, 0, 128])) <= 1).all()


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 255), (77, 77, 77)),
        ("LA", (0, 0), (255, 255, 255)),
        ("1", 1, (255, 255, 255)),
        ("P", 0, RED),
    ],
    ids=["L", "LA-opaque", "LA-transparent", "bilevel", "palette"],
)
def test_grey_bilevel_and_palette_pngs_decode_to_rgb(mode: str, colour: object, expected: tuple[int, int, int]) -> None:
    image = Image.new(mode, (12, 8), colour)  # type: ignore[arg-type]
    if mode == "P":
        image.putpalette([*RED] + [0, 0, 0] * 255)
    decoded = decode_image(encode(image, "PNG"), MAX_PIXELS).rgb
    assert_rgb8(decoded, (12, 8))
    assert (pixels(decoded) == np.array(expected)).all()


def test_an_l_jpeg_decodes_to_grey_rgb() -> None:
    decoded = pixels(decode_image(encode(Image.new("L", (16, 16), 100), "JPEG"), MAX_PIXELS).rgb)
    assert decoded.shape == (16, 16, 3)
    assert (np.abs(decoded - 100) <= 2).all()


# Draft decoding ----------------------------------------------------------------------------


def test_a_large_jpeg_is_drafted_keeping_the_models_input_and_shown_at_that_size() -> None:
    data = encode(gradient(3000, 2000), "JPEG", quality=80)
    decoded = decode_image(data, MAX_PIXELS)
    assert decoded.original_size == (3000, 2000)
    width, height = decoded.pdq_rgb.size  # a quarter: an eighth would fall below the model's input
    assert (width, height) == (750, 500) and DRAFT_SHORT_SIDE <= height < 2 * DRAFT_SHORT_SIDE
    assert_rgb8(decoded.rgb, (432, 288))
    assert decoded.pdq_rgb.mode == "RGB"


def test_a_large_rotated_jpeg_is_drafted_then_rotated() -> None:
    decoded = decode_image(jpeg_with_exif(gradient(2400, 1200), 6), MAX_PIXELS)
    assert decoded.pdq_rgb.size == (600, 300)  # as stored, drafted to a quarter
    assert_rgb8(decoded.rgb, (288, 576))


def test_a_small_jpeg_is_decoded_at_full_size_and_reduced_once() -> None:
    decoded = decode_image(encode(gradient(600, 520), "JPEG"), MAX_PIXELS)
    assert decoded.pdq_rgb.size == (600, 520)
    assert decoded.rgb.size == (332, 288)


def test_a_picture_smaller_than_the_models_input_is_never_enlarged() -> None:
    decoded = decode_image(encode(gradient(400, 200), "PNG"), MAX_PIXELS)
    assert decoded.rgb.size == decoded.pdq_rgb.size == (400, 200)
    assert decoded.rgb is decoded.pdq_rgb


def detailed(width: int, height: int) -> Image.Image:
    """Fine detail (a JPEG draft blurs it) over a gradient."""
    rng = np.random.default_rng(width * height)
    speckle = rng.integers(0, 60, (height, width, 1)).repeat(3, axis=2)
    return Image.fromarray(np.clip(pixels(gradient(width, height)) + speckle - 30, 0, 255).astype(np.uint8), "RGB")


def test_a_small_part_of_a_large_jpeg_is_cut_from_the_file_decoded_finer() -> None:
    """A part too small for the draft to hold at the model's input is decoded again at the scale it needs."""
    original = detailed(3000, 2000)
    decoded = decode_image(encode(original, "JPEG", quality=95), MAX_PIXELS)
    assert decoded.rgb.size == (432, 288) and decoded.pdq_rgb.size == (750, 500)  # the draft, a quarter
    assert decoded.shown.size == (1500, 1000)  # decoded again at a half for the region search
    part = decoded.crops([(200, 100, 500, 300)])[0]  # 600 × 400 pixels of the file: a half would give 300 × 200
    assert part.size == (600, 400)
    truth = original.crop((400, 200, 1000, 600))
    assert np.abs(pixels(part) - pixels(truth)).mean() < 6  # the file's detail, not the draft's blur
    assert np.abs(pixels(decoded.crops([(0, 0, 1500, 1000)])[0]) - pixels(decoded.shown)).max() == 0  # large


def test_a_part_of_a_turned_jpeg_is_cut_upright() -> None:
    original = detailed(2400, 1200)
    decoded = decode_image(jpeg_with_exif(original, 6), MAX_PIXELS)
    upright = original.transpose(Image.Transpose.ROTATE_270)  # 1200 × 2400
    assert decoded.shown.size == (600, 1200)
    part = decoded.crops([(100, 200, 300, 400)])[0]  # 400 × 400 of the upright file
    assert part.size == (400, 400)
    assert np.abs(pixels(part) - pixels(upright.crop((200, 400, 600, 800)))).mean() < 6


def test_parts_cut_together_share_the_scale_the_smallest_needs_and_none_asked_gives_none() -> None:
    """A collage's cells are cut in one call: one more decode, at the scale the smallest cell needs, for all."""
    original = detailed(3000, 2000)
    decoded = decode_image(encode(original, "JPEG", quality=95), MAX_PIXELS)
    cells = decoded.crops([(0, 0, 240, 240), (240, 0, 380, 140), (380, 0, 620, 240)], 160)
    assert [cell.size for cell in cells] == [(480, 480), (280, 280), (480, 480)]  # the file: the second needs it
    truth = original.crop((480, 0, 760, 280))
    assert np.abs(pixels(cells[1]) - pixels(truth)).mean() < 6
    assert decoded.crops([], 160) == []


# Pixel limit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "AVIF", "HEIF"])
def test_an_image_with_more_pixels_than_the_limit_is_refused(image_format: str) -> None:
    data = encode(gradient(200, 200), image_format)
    with pytest.raises(ResourceExhausted) as caught:
        decode_image(data, max_pixels=100 * 100)
    assert caught.value.reason == "IMAGE_TOO_MANY_PIXELS"
    assert decode_image(data, max_pixels=200 * 200).rgb.size == (200, 200)


def test_a_png_header_claiming_50000x50000_is_refused_before_decoding() -> None:
    # IHDR says 50000×50000 8-bit RGB (7.5 GB decoded); the body is a few bytes.
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
    assert len(data) < 100
    with pytest.raises(ResourceExhausted) as caught:
        decode_image(data, MAX_PIXELS)
    assert caught.value.reason == "IMAGE_TOO_MANY_PIXELS"
    assert "50000" in caught.value.message.replace(",", "")


def test_a_jpeg_header_claiming_too_many_pixels_is_refused() -> None:
    data = bytearray(encode(gradient(64, 48), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width in the SOF0 segment
    with pytest.raises(ResourceExhausted) as caught:
        decode_image(bytes(data), MAX_PIXELS)
    assert caught.value.reason == "IMAGE_TOO_MANY_PIXELS"


# Hostile and broken bytes ---------------------------------------------------------------------


def test_empty_bytes_give_image_empty() -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_image(b"", MAX_PIXELS)
    assert caught.value.reason == "IMAGE_EMPTY"


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a picture, it is a sentence",
        b"\x00" * 1000,
        b"\x00",
        np.random.default_rng(0).bytes(4096),
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"%PDF-1.4\n",
    ],
    ids=["text", "zeros", "one-zero", "random", "svg", "pdf"],
)
def test_bytes_that_are_no_picture_give_image_undecodable(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_image(data, MAX_PIXELS)
    assert caught.value.reason == "IMAGE_UNDECODABLE"


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF", "HEIF"])
def test_a_truncated_picture_gives_invalid_argument(image_format: str) -> None:
    data = encode(gradient(256, 256), image_format)
    for cut in (len(data) // 2, 40):
        with pytest.raises(InvalidArgument) as caught:
            decode_image(data[:cut], MAX_PIXELS)
        assert caught.value.reason == "IMAGE_UNDECODABLE"


def test_a_jpeg_cut_to_its_first_half_gives_invalid_argument() -> None:
    data = encode(gradient(512, 384), "JPEG", quality=90)
    with pytest.raises(InvalidArgument):
        decode_image(data[: len(data) // 2], MAX_PIXELS)


def _jpeg_with_app1(payload: bytes) -> bytes:
    data = encode(gradient(40, 20), "JPEG")
    assert data[:2] == b"\xff\xd8"
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


CORRUPT_EXIF = [
    b"Exif\x00\x00",
    b"Exif\x00\x00II*\x00",
    b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # IFD offset far past the end
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff",  # claims 65535 IFD entries
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00",  # orientation 9
    b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x05\x00\xff\xff\xff\x0f\x00\x00\x00\x00",  # huge count
    b"Exif\x00\x00XX" + bytes(range(256)) * 4,
    b"Exif\x00\x00" + np.random.default_rng(1).bytes(2000),
]


@pytest.mark.parametrize("payload", CORRUPT_EXIF, ids=[f"exif{i}" for i in range(len(CORRUPT_EXIF))])
def test_corrupt_exif_never_raises_anything_but_invalid_argument(payload: bytes) -> None:
    try:
        decoded = decode_image(_jpeg_with_app1(payload), MAX_PIXELS)
    except InvalidArgument:
        return
    assert_rgb8(decoded.rgb, decoded.rgb.size)
    assert decoded.rgb.size in ((40, 20), (20, 40))


def test_random_corruption_of_real_pictures_gives_only_typed_errors() -> None:
    """Flip bytes all over small pictures: every outcome is a picture or a LookalikeError."""
    rng = np.random.default_rng(2)
    formats = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF", "HEIF")
    originals = [encode(gradient(48, 32), fmt) for fmt in formats]
    for original in originals:
        for _ in range(25):
            data = bytearray(original)
            for position in rng.integers(0, len(data), size=4):
                data[position] = int(rng.integers(0, 256))
            try:
                decoded = decode_image(bytes(data), max_pixels=10_000_000)
            except LookalikeError:
                continue
            assert decoded.rgb.mode == "RGB"


def test_large_lossless_pictures_are_reduced_as_a_jpeg_draft_would_be() -> None:
    """A 12 MP PNG is reduced by whole pixel blocks to the scale a JPEG draft gives (short side 288 to 575),
    PDQ's picture, then to the model's input."""
    gradient = np.linspace(0, 255, 4000, dtype=np.uint8)
    big = Image.fromarray(np.tile(gradient, (3000, 1)), "L").convert("RGB")
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=20_000_000)
    assert decoded.original_size == (4000, 3000)
    assert decoded.pdq_rgb.size == (500, 375)
    assert decoded.rgb.size == (384, 288)
    ramp = np.asarray(decoded.pdq_rgb)[0, :, 0].astype(int)
    assert np.abs(ramp - np.linspace(0, 255, 500)).max() <= 2  # block averages of the ramp

"""Turning untrusted image bytes into the RGB pictures fingerprints are taken from, the same way every time.

Every fingerprint is computed from the pictures this module returns, so a listed
image and a later upload of it go through identical decoding: first frame only,
16-bit and CMYK brought to 8-bit RGB. The picture shown (embedding, pHash,
regions) has its EXIF orientation applied and transparency flattened onto white.
PDQ gets the picture as ThreatExchange's reference hasher reads the file, so that
hashes from shared lists match ours: as stored, EXIF orientation not applied, and
the colour under transparent pixels kept (its pdq-photo-hasher loads through CImg
and ImageMagick, which do neither; pdq/python's Pillow loader and
python-threatexchange's agree). JPEGs are decoded in Pillow's draft mode (DCT
scaling) to about the size the hashes need, which is several times cheaper than
a full decode and moves PDQ by a few bits at most.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from lookalike.client.errors import InvalidArgument, ResourceExhausted

# Pillow's own bomb guard is global and warns before it raises; we check the
# header's pixel count against our configured limit ourselves instead.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""Decoders we let untrusted bytes reach (the JPEG one also reads phones' MPO files)."""

DRAFT_SHORT_SIDE = 512
"""Short side that JPEG draft decoding keeps at least: enough for PDQ's 64×64
downsampling and for the embedding's 288-pixel input."""
MAX_SHORT_SIDE = 2 * DRAFT_SHORT_SIDE
"""Pictures decoded larger (PNG, TIFF, a JPEG draft cannot shrink) are resized to this short
side: every format then reaches the hashes at the scale a JPEG draft gives, and a 12 MP PNG
costs no more to hash than a phone JPEG."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded picture and what was learnt while decoding it."""

    rgb: Image.Image
    format: str
    original_size: tuple[int, int]
    pdq_rgb: Image.Image
    """The picture PDQ is computed from: as stored, with the colour under transparent pixels (the
    same object as `rgb` for a picture with neither an EXIF turn nor transparency)."""


def decode_image(data: bytes, max_pixels: int) -> DecodedImage:
    """Decode untrusted bytes into an 8-bit RGB picture, or raise a typed error."""
    if not data:
        raise InvalidArgument("image is empty (0 bytes)", "IMAGE_EMPTY")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidArgument(f"image has no pixels ({width}×{height})", "IMAGE_EMPTY")
            if width * height > max_pixels:
                raise ResourceExhausted(
                    f"image is {width}×{height} = {width * height:,} pixels; the server accepts at most {max_pixels:,}",
                    "IMAGE_TOO_MANY_PIXELS",
                )
            image_format = image.format or "unknown"
            if image_format in ("JPEG", "MPO"):
                image.draft("RGB", _draft_request(width, height))
            image.seek(0)
            image.load()
            turn = _orientation(image)
            # Unflattened first, so that a large transparent picture holds one full-size RGB copy at a time.
            unflattened = _bounded(image.convert("RGB")) if _has_alpha(image) else None
            stored = _bounded(_to_rgb(image))
            pdq_rgb = stored if unflattened is None else unflattened
            rgb = stored if turn is None else stored.transpose(turn)
    except (InvalidArgument, ResourceExhausted):
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(
            "image format not recognised; send JPEG, PNG, WebP, GIF, BMP or TIFF bytes",
            "IMAGE_UNDECODABLE",
        ) from None
    except Image.DecompressionBombError as error:
        raise ResourceExhausted(str(error), "IMAGE_TOO_MANY_PIXELS") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as error:
        raise InvalidArgument(
            f"image could not be decoded ({type(error).__name__}: {error})", "IMAGE_UNDECODABLE"
        ) from None
    except MemoryError:
        raise ResourceExhausted("image too large to decode in memory", "IMAGE_TOO_LARGE") from None
    return DecodedImage(rgb=rgb, format=image_format, original_size=(width, height), pdq_rgb=pdq_rgb)


THUMBNAIL_SIDE = 160
"""Longest side of the thumbnails kept for lists that opt in."""
THUMBNAIL_QUALITY = 70


def thumbnail_webp(rgb: Image.Image) -> bytes:
    """A small WebP of the picture as shown (upright, on white), for the dashboard: a few kilobytes."""
    small = rgb.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY, method=4)
    return buffer.getvalue()


def _draft_request(width: int, height: int) -> tuple[int, int]:
    """The (w, h) to ask draft() for so the short side stays ≥ DRAFT_SHORT_SIDE."""
    scale = DRAFT_SHORT_SIDE / min(width, height)
    if scale >= 1:
        return width, height
    return max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))


def _bounded(rgb: Image.Image) -> Image.Image:
    width, height = rgb.size
    scale = MAX_SHORT_SIDE / min(width, height)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation → the transpose that shows the picture upright."""


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The turn EXIF asks for (applied once the picture is scaled down: cheaper than turning the whole
    decode); a corrupt EXIF block means none."""
    try:
        return _TURNS.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no orientation"
        return None


def _has_alpha(image: Image.Image) -> bool:
    """Whether `_to_rgb` flattens the picture onto white (and PDQ's picture must keep the colour below)."""
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


STRIPE_PIXELS = 1 << 20
"""Conversions that need temporaries several times the picture's size run a stripe of rows this
many pixels large at a time: a small 16-bit or transparent PNG that declares 60 Mpx would
otherwise cost well over a gigabyte to decode, not a few hundred megabytes."""

_SIXTEEN_BIT_TO_8 = np.clip(np.arange(65536, dtype=np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _stripes(height: int, width: int) -> range:
    return range(0, height, max(1, STRIPE_PIXELS // max(1, width)))


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited onto white, high bit depths scaled."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        gray = _SIXTEEN_BIT_TO_8[np.asarray(image).astype(np.uint16, copy=False)]
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("I", "F"):
        array = np.asarray(image)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        gray = np.empty(array.shape, dtype=np.uint8)
        rows = _stripes(*array.shape)
        for start in rows:
            part = array[start : start + rows.step].astype(np.float64)
            gray[start : start + rows.step] = np.clip(part / top * 255.0 + 0.5, 0, 255)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in _ALPHA_MODES:
        rgb = Image.new("RGB", image.size)
        width, height = image.size
        rows = _stripes(height, width)
        for top in rows:
            stripe = image.crop((0, top, width, min(height, top + rows.step))).convert("RGBA")
            background = Image.new("RGBA", stripe.size, (255, 255, 255, 255))
            rgb.paste(Image.alpha_composite(background, stripe).convert("RGB"), (0, top))
        return rgb
    if mode == "RGB":
        return image
    return image.convert("RGB")

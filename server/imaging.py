"""Turning untrusted image bytes into the RGB pictures fingerprints are taken from, the same way every time.

Every fingerprint is computed from the pictures this module returns, so a listed
image and a later upload of it go through identical decoding: first frame only,
16-bit and CMYK brought to 8-bit RGB. The picture shown (embedding, pHash,
regions) has its EXIF orientation applied and transparency flattened onto white.
PDQ gets the picture as ThreatExchange's reference hasher reads the file, so that
hashes from shared lists match ours: as stored, EXIF orientation not applied, and
the colour under transparent pixels kept (its pdq-photo-hasher loads through CImg
and ImageMagick, which do neither; pdq/python's Pillow loader and
python-threatexchange's agree).

Every picture is decoded once, to the size the work needs: a JPEG in Pillow's draft mode (DCT
scaling: several times cheaper than a full decode) so that its short side stays at least the
embedding's input (288), any other format reduced by whole pixel blocks to the same scale. PDQ
reads that picture with the file's weights (server/pdq.py): on the 393 dev corpus photos it lies 0.23 bits
from the reference hasher's on the whole file on average, 4 at most. The embedding and pHash read the
picture resized to the model's input; the region search, when a check asks for it, reads the draft set
upright (`DecodedImage.upright`: its finders work on a copy 320 pixels long), and only the parts it finds
are cut from the picture decoded finer (`DecodedImage.shown`, `crops`).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from lookalike.client.errors import InvalidArgument, ResourceExhausted
from lookalike.server.embedder import SHORT_SIDE, embedding_input, input_size

# Pillow's own bomb guard is global and warns before it raises; we check the
# header's pixel count against our configured limit ourselves instead.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

# HEIC/HEIF through libheif, on the calling thread alone (a fingerprint worker's one core), its primary
# picture only: thumbnails, depth maps and auxiliary pictures are never decoded. libheif turns and mirrors
# the picture as the file says and leaves EXIF orientation 1.
pillow_heif.register_heif_opener(decode_threads=1, thumbnails=False, depth_images=False, aux_images=False)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")
"""Decoders we let untrusted bytes reach (the JPEG one also reads phones' MPO files; HEIF reads HEIC)."""
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, RuntimeError, struct.error)
"""What those decoders raise on a damaged file."""

DRAFT_SHORT_SIDE = SHORT_SIDE
"""Short side that JPEG draft decoding keeps at least: the embedding's input (PDQ, pHash and the
region search need no more)."""
REGION_SHORT_SIDE = 512
"""Short side the picture that parts found inside it are cut from keeps at least (a JPEG draft, a block
reduction). Decoded only when the region search found something: the finders read the draft."""

MAX_FRAME_VIEWS = 8
"""Frames of an animation (or pages of a multi-page file) after the first that a check looks at at most:
a listed picture shown for a moment inside an animated upload is found, whatever its first frame shows."""
DISTINCT_FRAME = 16.0
"""Mean grey difference (0-255) between two frames' 16×16 thumbnails above which the later one shows another
picture. On the dev corpus, two different photos differ by 27 at the first percentile (12 at least), a photo
and its 256-colour GIF by under 1, two views of a 3 % pan by 10 (median): frames that only move a little are
not worth an embedding."""
FRAME_READ_PIXELS = 16_000_000
"""Pixels of an animation's frames read at most to choose among them (a 500×500 GIF's first 64 frames, a
1000×1000 one's first 16): a long animation is looked at from its start."""
MAX_FRAMES_READ = 200
"""Frames read at most, however small."""
FRAME_SIGNATURE = 16
"""Side of the grey thumbnail frames are told apart by."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded picture and what was learnt while decoding it."""

    rgb: Image.Image
    """The picture shown, at the embedding's input size (`embedder.input_size`) or smaller, never enlarged:
    EXIF turn applied, transparency flattened onto white."""
    format: str
    original_size: tuple[int, int]
    pdq_rgb: Image.Image
    """The picture PDQ is computed from, as decoded (short side 288 to 575 when the original's was larger):
    as stored, with the colour under transparent pixels (the same object as `rgb` for a small picture with
    neither an EXIF turn nor transparency)."""
    draft: Image.Image
    """The picture shown as decoded, before its EXIF turn: `pdq_rgb`, flattened onto white."""
    turn: Image.Transpose | None
    data: bytes
    """The file, decoded again, finer, when parts of the picture need it (`crops`)."""

    @cached_property
    def upright(self) -> Image.Image:
        """The draft as shown (turned, flattened): where pictures inside it are looked for."""
        return self.draft if self.turn is None else self.draft.transpose(self.turn)

    @cached_property
    def shown(self) -> Image.Image:
        """The picture shown (turned, flattened) with a short side of at least REGION_SHORT_SIDE where the file
        has it: where parts of it are cut from. The draft itself when large enough, else the file decoded again."""
        if min(self.draft.size) >= REGION_SHORT_SIDE or self.draft.size == self.original_size:
            return self.upright
        return _shown(self.data, REGION_SHORT_SIDE, self.turn)

    @cached_property
    def numbered_frames(self) -> list[tuple[int, Image.Image]]:
        """Up to MAX_FRAME_VIEWS later frames of an animation (pages of a multi-page file), each with its
        number (0: the first), shown (turned, flattened) at the embedding's input size: the most distinct from
        the first frame and from each other, and only those more than DISTINCT_FRAME from all of them. Empty
        for a still picture. Decoded only when a check asks; a frame that fails to decode ends the reading,
        the frames before it count."""
        return _distinct_frames(self.data, self.turn)

    @property
    def other_frames(self) -> list[Image.Image]:
        """`numbered_frames` without their numbers."""
        return [frame for _, frame in self.numbered_frames]

    @property
    def shown_size(self) -> tuple[int, int]:
        """The file's full size as shown: `original_size`, turned."""
        width, height = self.original_size
        return (height, width) if self.turn in _QUARTER_TURNS else (width, height)

    def crops(
        self, boxes: Sequence[tuple[int, int, int, int]], short_side: int = DRAFT_SHORT_SIDE
    ) -> list[Image.Image]:
        """What each box (left, top, right, bottom in `shown`'s pixels) frames, with its short side at least
        `short_side` where the file has the pixels: cut from `shown` when that is fine enough, else from the
        file decoded once more at the scale the smallest part needs (small parts of a composite: few pictures)."""
        if not boxes:
            return []
        file_scale = max(self.original_size) / max(self.shown.size)
        smallest = min(min(right - left, bottom - top) for left, top, right, bottom in boxes)
        needed = math.ceil(min(self.original_size) * short_side / max(1.0, smallest * file_scale))
        if needed <= min(self.shown.size) or max(self.shown.size) == max(self.original_size):
            return [self.shown.crop(box) for box in boxes]
        finer = _shown(self.data, needed, self.turn)
        across, down = finer.width / self.shown.width, finer.height / self.shown.height
        return [
            finer.crop((round(left * across), round(top * down), round(right * across), round(bottom * down)))
            for left, top, right, bottom in boxes
        ]


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
            unflattened = _drafted(image.convert("RGB")) if _has_alpha(image) else None
            stored = _drafted(_to_rgb(image))
            pdq_rgb = stored if unflattened is None else unflattened
            shown = _reduced(stored)  # turned once small: cheaper than turning the draft
            rgb = shown if turn is None else shown.transpose(turn)
    except (InvalidArgument, ResourceExhausted):
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(
            "image format not recognised; send JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP or TIFF bytes",
            "IMAGE_UNDECODABLE",
        ) from None
    except Image.DecompressionBombError as error:
        raise ResourceExhausted(str(error), "IMAGE_TOO_MANY_PIXELS") from None
    except _DECODE_ERRORS as error:
        raise InvalidArgument(
            f"image could not be decoded ({type(error).__name__}: {error})", "IMAGE_UNDECODABLE"
        ) from None
    except MemoryError:
        raise ResourceExhausted("image too large to decode in memory", "IMAGE_TOO_LARGE") from None
    return DecodedImage(rgb, image_format, (width, height), pdq_rgb, stored, turn, data)


THUMBNAIL_SIDE = 160
"""Longest side of the thumbnails kept for lists that opt in."""
THUMBNAIL_QUALITY = 70


def thumbnail_webp(rgb: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small WebP of the picture as shown (upright, on white), `side` on its long side at most, for the
    dashboard: a few kilobytes."""
    small = rgb.copy()
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="WEBP", quality=THUMBNAIL_QUALITY, method=4)
    return buffer.getvalue()


def _shown(data: bytes, short_side: int, turn: Image.Transpose | None) -> Image.Image:
    """The picture shown (turned, flattened), decoded again from bytes `decode_image` took, keeping
    `short_side` (the file's own size at most)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", _draft_request(*image.size, short_side))
        image.seek(0)
        image.load()
        shown = _drafted(_to_rgb(image), short_side)
    return shown if turn is None else shown.transpose(turn)


def _distinct_frames(data: bytes, turn: Image.Transpose | None) -> list[tuple[int, Image.Image]]:
    """`DecodedImage.other_frames`: thumbnails of the frames read first (FRAME_READ_PIXELS, MAX_FRAMES_READ),
    the most distinct of them chosen, then those decoded again at the embedding's input size. A phone's MPO
    holds a second view of one scene, not another picture: none."""
    frames: list[tuple[int, Image.Image]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            if image.format == "MPO" or not getattr(image, "is_animated", False):
                return frames
            for index in _most_distinct(_frame_signatures(image)):
                image.seek(index)
                frame = _reduced(_drafted(_to_rgb(image)))
                frame = frame.copy() if frame is image else frame  # the next seek reuses the frame's pixels
                frames.append((index, frame if turn is None else frame.transpose(turn)))
        except (*_DECODE_ERRORS, MemoryError):
            pass
    return frames


def _frame_signatures(image: Image.Image) -> list[np.ndarray]:
    """A grey FRAME_SIGNATURE² thumbnail of each frame read, from the first; a damaged frame ends the list."""
    signatures: list[np.ndarray] = []
    budget = FRAME_READ_PIXELS
    for index in range(MAX_FRAMES_READ):
        try:
            image.seek(index)  # reads the frame's header (a TIFF page's own size), not yet its pixels
            budget -= image.width * image.height
            if budget < 0:
                break
            grey = _to_rgb(image).convert("L").resize((FRAME_SIGNATURE, FRAME_SIGNATURE), Image.Resampling.BOX)
        except (*_DECODE_ERRORS, MemoryError):
            break
        signatures.append(np.asarray(grey, dtype=np.float32).reshape(-1))
    return signatures


def _most_distinct(signatures: Sequence[np.ndarray]) -> list[int]:
    """Indices of up to MAX_FRAME_VIEWS frames after the first, in order: each the farthest from the first
    and those chosen before it, while that is more than DISTINCT_FRAME."""
    if len(signatures) < 2:
        return []
    table = np.stack(signatures)
    nearest = np.abs(table - table[0]).mean(axis=1)  # from each frame to the closest frame chosen (or the first)
    chosen: list[int] = []
    while len(chosen) < MAX_FRAME_VIEWS:
        index = int(np.argmax(nearest))
        if nearest[index] <= DISTINCT_FRAME:
            break
        chosen.append(index)
        nearest = np.minimum(nearest, np.abs(table - table[index]).mean(axis=1))
    return sorted(chosen)


def _draft_request(width: int, height: int, short_side: int = DRAFT_SHORT_SIDE) -> tuple[int, int]:
    """The (w, h) to ask draft() for so the short side stays ≥ `short_side`."""
    scale = short_side / min(width, height)
    if scale >= 1:
        return width, height
    return max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))


def _drafted(rgb: Image.Image, short_side: int = DRAFT_SHORT_SIDE) -> Image.Image:
    """`rgb` reduced by the largest power of two that keeps its short side ≥ `short_side`, averaging
    blocks of pixels: what a JPEG draft does by DCT scaling, for the other formats (and JPEGs larger than
    an eighth can shrink). One pass over the pixels, far cheaper than filtering them."""
    factor = 1
    while min(rgb.size) >= 2 * factor * short_side:
        factor *= 2
    return rgb if factor == 1 else rgb.reduce(factor)


def _reduced(rgb: Image.Image) -> Image.Image:
    """`rgb` at the embedding's input size (`embedding_input`: the same pixels) unless that would enlarge it."""
    size = input_size(*rgb.size)
    return rgb if size[0] > rgb.width or size[1] > rgb.height else embedding_input(rgb)


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


_QUARTER_TURNS = frozenset(
    (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE)
)
"""Turns that swap a picture's width and height."""


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

"""Seeded image edits modelled on Meta's DISC21 / AugLy, in pure Pillow + numpy.

Each edit maps (RGB picture, random.Random) to an RGB picture, the same for the same seed.
Edits ending in a JPEG encode keep their bytes; `encode_edited` sends the rest as JPEG q85.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Edit = Callable[[Image.Image, random.Random], Image.Image]

_JPEG_KEY = "lookalike_jpeg"
_WORDS = (
    "when",
    "you",
    "see",
    "it",
    "lol",
    "monday",
    "mood",
    "best",
    "day",
    "ever",
    "wait",
    "for",
    "this",
    "one",
    "cat",
    "vibes",
    "no",
    "way",
    "true",
    "story",
    "me",
    "irl",
)


def _encode(image: Image.Image, image_format: str, **options: int) -> bytes:
    """The picture's bytes in a format, as RGB."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, image_format, **options)
    return buffer.getvalue()


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """JPEG bytes of a picture at the given quality (4:2:0, no EXIF)."""
    return _encode(image, "JPEG", quality=quality)


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of a picture."""
    return _encode(image, "PNG")


def encode_edited(image: Image.Image, quality: int = 85) -> bytes:
    """The bytes an edit produced itself if its last step was a JPEG encode, else JPEG `quality`."""
    data = image.info.get(_JPEG_KEY) if image.format == "JPEG" else None
    return data if isinstance(data, bytes) else encode_jpeg(image, quality)


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode to JPEG and decode again, remembering the bytes for `encode_edited`."""
    data = encode_jpeg(image, quality)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    decoded.info[_JPEG_KEY] = data
    return decoded


def _colour(rng: random.Random) -> tuple[int, int, int]:
    """A random opaque RGB colour."""
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at a pixel size."""
    return ImageFont.load_default(size=max(8, size))


def _words(rng: random.Random, low: int, high: int) -> str:
    """A short meme-like phrase."""
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high))).upper()


def _scaled(image: Image.Image, scale: float) -> Image.Image:
    """The picture resized by `scale` per side (Lanczos), at least 1×1."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def resize_jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    """Downscale to 30–70 % per side, then JPEG quality 30–70."""
    return _jpeg_roundtrip(_scaled(image, rng.uniform(0.3, 0.7)), rng.randint(30, 70))


def thumbnail_q30(image: Image.Image, rng: random.Random) -> Image.Image:
    """Long side 200 px, JPEG quality 30."""
    return _jpeg_roundtrip(_scaled(image, 200 / max(image.size)), 30)


def _crop(image: Image.Image, rng: random.Random, removed: float) -> Image.Image:
    """Keep a random window holding (1 - removed) of the area, of random aspect."""
    keep, split = 1.0 - removed, rng.uniform(0.0, 1.0)
    fw, fh = keep**split, keep ** (1.0 - split)
    w, h = max(1, round(image.width * fw)), max(1, round(image.height * fh))
    x, y = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
    return image.crop((x, y, x + w, y + h))


def _crop_family(removed: float) -> Edit:
    """A crop edit removing a fixed share of the area."""

    def edit(image: Image.Image, rng: random.Random) -> Image.Image:
        return _crop(image, rng, removed)

    edit.__doc__ = f"Keep a random window with {100 - round(removed * 100)} % of the area."
    return edit


def pad_border(image: Image.Image, rng: random.Random) -> Image.Image:
    """Borders of 5–25 % on each side, a solid colour or coloured noise."""
    left, right = (round(image.width * rng.uniform(0.05, 0.25)) for _ in range(2))
    top, bottom = (round(image.height * rng.uniform(0.05, 0.25)) for _ in range(2))
    size = (image.width + left + right, image.height + top + bottom)
    if rng.random() < 0.75:
        canvas = Image.new("RGB", size, _colour(rng))
    else:
        pixels = np.random.default_rng(rng.getrandbits(64)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        canvas = Image.fromarray(pixels, "RGB")
    canvas.paste(image, (left, top))
    return canvas


def rotate_small(image: Image.Image, rng: random.Random) -> Image.Image:
    """Rotate by ±3–10°, expanding the frame and filling the corners with a colour."""
    angle = rng.uniform(3.0, 10.0) * rng.choice((-1, 1))
    return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=_colour(rng))


def rotate_90(image: Image.Image, rng: random.Random) -> Image.Image:
    """Rotate by 90, 180 or 270°."""
    turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
    return image.transpose(rng.choice(turns))


def flip_h(image: Image.Image, rng: random.Random) -> Image.Image:
    """Mirror left to right."""
    return ImageOps.mirror(image)


def aspect(image: Image.Image, rng: random.Random) -> Image.Image:
    """Stretch one axis by 0.6–0.9× or 1.1–1.5×."""
    factor = rng.uniform(0.6, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.5)
    w, h = image.size
    size = (max(1, round(w * factor)), h) if rng.random() < 0.5 else (w, max(1, round(h * factor)))
    return image.resize(size, Image.Resampling.BICUBIC)


def colour_jitter(image: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness and contrast 0.6–1.4×, saturation 0.5–1.5×, hue shift up to ±30/255."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.5, 1.5))
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + rng.randint(-30, 30)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def grayscale(image: Image.Image, rng: random.Random) -> Image.Image:
    """Luminance only, kept as three channels."""
    return ImageOps.grayscale(image).convert("RGB")


def blur(image: Image.Image, rng: random.Random) -> Image.Image:
    """Gaussian blur of radius 1–3 px."""
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 3.0)))


def noise(image: Image.Image, rng: random.Random) -> Image.Image:
    """Additive gaussian noise, sigma 5–20 grey levels."""
    pixels, sigma = np.asarray(image, dtype=np.float32), rng.uniform(5.0, 20.0)
    noisy = pixels + np.random.default_rng(rng.getrandbits(64)).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")


def text_caption(image: Image.Image, rng: random.Random) -> Image.Image:
    """A meme-style outlined caption across the top or bottom, about 10 % of the height."""
    draw, text = ImageDraw.Draw(image := image.copy()), _words(rng, 2, 5)
    size = max(8, round(image.height * 0.08))
    while size > 8 and draw.textlength(text, font=_font(size)) > image.width * 0.95:
        size -= 2
    font = _font(size)
    x = (image.width - draw.textlength(text, font=font)) / 2
    y = image.height * (0.02 if rng.random() < 0.5 else 0.88)
    fill, outline = ((255, 255, 255), (0, 0, 0)) if rng.random() < 0.8 else (_colour(rng), (255, 255, 255))
    draw.text((x, y), text, font=font, fill=fill, stroke_width=max(1, size // 12), stroke_fill=outline)
    return image


def _sticker(draw: ImageDraw.ImageDraw, box: tuple[int, int, int], rng: random.Random) -> None:
    """Draw one sticker (smiley, star, heart or rounded tile) in the square at (x, y) of side s."""
    x, y, s = box

    def at(px: float, py: float) -> tuple[float, float]:
        """Unit-square coordinates inside the sticker's square."""
        return (x + px * s, y + py * s)

    kind = rng.choice(("smiley", "star", "heart", "tile"))
    if kind == "smiley":
        draw.ellipse((*at(0, 0), *at(1, 1)), fill=(255, 204, 0), outline=(0, 0, 0), width=max(1, s // 30))
        draw.ellipse((*at(0.25, 0.3), *at(0.4, 0.45)), fill=(0, 0, 0))
        draw.ellipse((*at(0.6, 0.3), *at(0.75, 0.45)), fill=(0, 0, 0))
        draw.arc((*at(0.25, 0.35), *at(0.75, 0.8)), 20, 160, fill=(0, 0, 0), width=max(1, s // 20))
    elif kind == "star":
        angles = np.linspace(-np.pi / 2, 1.5 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.22)
        points = [at(0.5 + r * np.cos(a), 0.5 + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
        draw.polygon(points, fill=_colour(rng))
    elif kind == "heart":
        colour = (rng.randint(180, 255), rng.randint(0, 60), rng.randint(40, 120))
        draw.ellipse((*at(0, 0), *at(0.55, 0.55)), fill=colour)
        draw.ellipse((*at(0.45, 0), *at(1, 0.55)), fill=colour)
        draw.polygon([at(0.03, 0.4), at(0.97, 0.4), at(0.5, 1)], fill=colour)
    else:
        draw.rounded_rectangle((*at(0, 0), *at(1, 1)), s // 4, _colour(rng), _colour(rng), max(1, s // 15))


def emoji_overlay(image: Image.Image, rng: random.Random) -> Image.Image:
    """Two to five drawn stickers (smileys, stars, hearts, tiles) covering 5–15 % of the area."""
    draw, count = ImageDraw.Draw(image := image.copy()), rng.randint(2, 5)
    side = max(6, round((rng.uniform(0.05, 0.15) * image.width * image.height / count) ** 0.5))
    for _ in range(count):
        x, y = rng.randint(0, max(0, image.width - side)), rng.randint(0, max(0, image.height - side))
        _sticker(draw, (x, y, side), rng)
    return image


def watermark(image: Image.Image, rng: random.Random) -> Image.Image:
    """Semi-transparent text tiled over the whole picture, tilted by up to ±30°."""
    (w, h), big = image.size, round((image.width**2 + image.height**2) ** 0.5) + 2
    draw = ImageDraw.Draw(layer := Image.new("RGBA", (big, big), (0, 0, 0, 0)))
    text = rng.choice(("© STOCK", "SAMPLE", "PREVIEW", "@user", "DO NOT COPY"))
    font = _font(size := max(10, round(min(w, h) * rng.uniform(0.05, 0.1))))
    fill = (*rng.choice(((255, 255, 255), (0, 0, 0), _colour(rng))), rng.randint(60, 130))
    step_x, step_y = round(draw.textlength(text, font=font) * 1.4) + 1, round(size * 2.5) + 1
    for row, ty in enumerate(range(0, big, step_y)):
        for tx in range(-(row % 2) * step_x // 2, big, step_x):
            draw.text((tx, ty), text, font=font, fill=fill)
    layer = layer.rotate(rng.uniform(-30, 30), Image.Resampling.BICUBIC)
    left, top = (big - w) // 2, (big - h) // 2
    return Image.alpha_composite(image.convert("RGBA"), layer.crop((left, top, left + w, top + h))).convert("RGB")


def screenshot(image: Image.Image, rng: random.Random) -> Image.Image:
    """The picture at 30–60 % of a phone (or desktop) screenshot's area, with fake UI bars and text."""
    cw, ch = (720, 1280) if rng.random() < 0.7 else (1280, 720)
    light = ((255, 255, 255), (20, 20, 20), (240, 240, 240))
    bg, ink, bar = ((18, 18, 18), (230, 230, 230), (40, 40, 40)) if rng.random() < 0.4 else light
    draw = ImageDraw.Draw(canvas := Image.new("RGB", (cw, ch), bg))
    status, header = round(ch * 0.035), round(ch * 0.07)
    draw.rectangle((0, 0, cw, status + header), fill=bar)
    draw.rectangle((0, ch - header, cw, ch), fill=bar)
    draw.text((cw * 0.04, 2), f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}", font=_font(status * 2 // 3), fill=ink)
    draw.rectangle((cw * 0.85, status * 0.3, cw * 0.95, status * 0.75), outline=ink, width=2)
    draw.ellipse((cw * 0.03, status + header * 0.2, cw * 0.03 + header * 0.6, status + header * 0.8), fill=_colour(rng))
    draw.text(
        (cw * 0.03 + header * 0.8, status + header * 0.25),
        _words(rng, 1, 2).lower(),
        font=_font(header * 2 // 5),
        fill=ink,
    )
    for i in range(5):
        cx, cy = cw * (0.1 + 0.2 * i), ch - header / 2
        draw.ellipse((cx - header * 0.2, cy - header * 0.2, cx + header * 0.2, cy + header * 0.2), outline=ink, width=2)
    top, room_h = status + header + 8, ch - status - 2 * header - 16
    scale = (rng.uniform(0.3, 0.6) * cw * ch / (image.width * image.height)) ** 0.5
    pic = _scaled(image, min(scale, (cw - 16) / image.width, room_h * 0.85 / image.height))
    canvas.paste(pic, ((cw - pic.width) // 2 if rng.random() < 0.7 else 8, top))
    y, line = top + pic.height + 10, round(ch * 0.022)
    while y + line < ch - header - 4:
        draw.text((cw * 0.04, y), _words(rng, 3, 7).lower(), font=_font(line), fill=ink)
        y += round(line * 1.6)
    return canvas


def combo_crop_flip_shrink(image: Image.Image, rng: random.Random) -> Image.Image:
    """Crop away 30 %, mirror, shrink to 50 % per side, JPEG quality 50."""
    return _jpeg_roundtrip(_scaled(ImageOps.mirror(_crop(image, rng, 0.30)), 0.5), 50)


def _chain(count: int) -> Edit:
    """An edit chaining `count` distinct simple families, chosen by the rng."""

    def edit(image: Image.Image, rng: random.Random) -> Image.Image:
        for name in rng.sample(sorted(SIMPLE_FAMILIES), count):
            image = SIMPLE_FAMILIES[name](image, rng)
        return image

    edit.__doc__ = f"{count} random simple families chained."
    return edit


EDIT_FAMILIES: dict[str, Edit] = {
    "resize_jpeg": resize_jpeg,
    "thumbnail_q30": thumbnail_q30,
    "crop_10": _crop_family(0.10),
    "crop_30": _crop_family(0.30),
    "crop_50": _crop_family(0.50),
    "pad_border": pad_border,
    "rotate_small": rotate_small,
    "rotate_90": rotate_90,
    "flip_h": flip_h,
    "aspect": aspect,
    "colour_jitter": colour_jitter,
    "grayscale": grayscale,
    "blur": blur,
    "noise": noise,
    "text_caption": text_caption,
    "emoji_overlay": emoji_overlay,
    "watermark": watermark,
    "screenshot": screenshot,
    "combo_crop_flip_shrink": combo_crop_flip_shrink,
    "combo_2": _chain(2),
    "combo_3": _chain(3),
}
"""Every edit family by name, in the order reports list them."""

SIMPLE_FAMILIES: dict[str, Edit] = {
    name: edit
    for name, edit in EDIT_FAMILIES.items()
    if name not in ("thumbnail_q30", "screenshot", "combo_crop_flip_shrink", "combo_2", "combo_3")
}
"""Families that `combo_2` and `combo_3` draw from (no thumbnail, screenshot or combos)."""


def apply_edit(name: str, image: Image.Image, rng: random.Random) -> Image.Image:
    """Apply the named edit family to an RGB picture, deterministically given `rng`."""
    edit = EDIT_FAMILIES.get(name)
    if edit is None:
        raise KeyError(f"unknown edit family {name!r}; expected one of {', '.join(EDIT_FAMILIES)}")
    return edit(image if image.mode == "RGB" else image.convert("RGB"), rng)

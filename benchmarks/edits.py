"""Seeded image edits modelled on Meta's DISC21 / AugLy, in pure Pillow + numpy.

Each edit maps (RGB picture, random.Random) to an RGB picture, the same for the same seed.
Edits ending in a JPEG encode keep their bytes; `encode_edited` sends the rest as JPEG q85.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Edit = Callable[[Image.Image, random.Random], Image.Image]

_ENCODED_KEY = "lookalike_encoded"
_REGION_KEY = "lookalike_region"
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
    """The bytes an edit produced itself if its last step was an encode (a JPEG, an animation), else JPEG
    `quality`. A picture decoded from a file has its format; what an edit makes of it afterwards has none."""
    data = image.info.get(_ENCODED_KEY) if image.format is not None else None
    return data if isinstance(data, bytes) else encode_jpeg(image, quality)


def _decoded(data: bytes) -> Image.Image:
    """The file's (first) picture in RGB, remembering its bytes (and format) for `encode_edited`."""
    decoded: Image.Image = Image.open(io.BytesIO(data))
    decoded.load()
    if decoded.mode != "RGB":
        rgb = decoded.convert("RGB")
        rgb.format = decoded.format
        decoded = rgb
    decoded.info[_ENCODED_KEY] = data
    return decoded


def _jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode to JPEG and decode again, remembering the bytes for `encode_edited`."""
    return _decoded(encode_jpeg(image, quality))


def _marked(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """Note where a composite put the picture (clipped to the canvas), for `region_of`."""
    left, top, right, bottom = max(0, round(box[0])), max(0, round(box[1])), round(box[2]), round(box[3])
    right, bottom = min(image.width, right), min(image.height, bottom)
    if right > left and bottom > top:
        image.info[_REGION_KEY] = (left, top, right, bottom)
    return image


def region_of(image: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the picture inside a composite's result, where the edit noted it
    (the last step was the composite); else None."""
    box = image.info.get(_REGION_KEY)
    return box if isinstance(box, tuple) else None


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


def _largest_upright(width: int, height: int, degrees: float) -> tuple[int, int]:
    """Width and height of the largest upright rectangle inside a w×h picture turned by `degrees`."""
    angle = abs(np.radians(degrees)) % np.pi
    if angle > np.pi / 2:
        angle = np.pi - angle
    sin, cos = np.sin(angle), np.cos(angle)
    long, short = max(width, height), min(width, height)
    if short <= 2.0 * sin * cos * long or abs(sin - cos) < 1e-10:
        half = 0.5 * short
        w, h = (half / sin, half / cos) if width >= height else (half / cos, half / sin)
    else:
        double = cos * cos - sin * sin
        w, h = (width * cos - height * sin) / double, (height * cos - width * sin) / double
    return max(1, int(w)), max(1, int(h))


def rotate_large(image: Image.Image, rng: random.Random) -> Image.Image:
    """Rotate by ±5–30°: half the time onto a larger frame filled with a colour, else cropped
    to the largest upright rectangle inside (no corners left)."""
    angle = rng.uniform(5.0, 30.0) * rng.choice((-1, 1))
    if rng.random() < 0.5:
        return image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=_colour(rng))
    turned = image.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    w, h = _largest_upright(image.width, image.height, angle)
    left, top = (turned.width - w) // 2, (turned.height - h) // 2
    return turned.crop((left, top, left + w, top + h))


def _perspective_coefficients(
    source: Sequence[tuple[float, float]], target: Sequence[tuple[float, float]]
) -> list[float]:
    """Pillow's eight PERSPECTIVE coefficients that map `target` corners back to `source` corners."""
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solved = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(source, dtype=np.float64).ravel())
    return [float(c) for c in solved]


def warp(
    image: Image.Image, corners: Sequence[tuple[float, float]], size: tuple[int, int], fill: int | tuple[int, int, int]
) -> Image.Image:
    """The picture warped so its corners (top-left, top-right, bottom-right, bottom-left) land on
    `corners` of a canvas of `size`, the rest filled with a colour."""
    w, h = image.size
    source = [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
    coefficients = _perspective_coefficients(source, corners)
    return image.transform(size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC, fillcolor=fill)


def perspective(image: Image.Image, rng: random.Random) -> Image.Image:
    """Seen at an angle: each corner moved inward by 0–20 % of the sides, the rest a solid colour."""
    w, h = image.size
    corners = [
        (rng.uniform(0, 0.2) * w, rng.uniform(0, 0.2) * h),
        (w - rng.uniform(0, 0.2) * w, rng.uniform(0, 0.2) * h),
        (w - rng.uniform(0, 0.2) * w, h - rng.uniform(0, 0.2) * h),
        (rng.uniform(0, 0.2) * w, h - rng.uniform(0, 0.2) * h),
    ]
    return warp(image, corners, (w, h), _colour(rng))


# Composites: the picture inside a larger picture made of other photos and drawn UI ---------------

Others = Callable[[random.Random], Image.Image]
"""Another (unlisted) photo for a composite, picked with the edit's rng."""
CompositeEdit = Callable[[Image.Image, random.Random, Others], Image.Image]


def _fit(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """The picture scaled to fit inside a (width, height) box, aspect kept."""
    return _scaled(image, min(box[0] / image.width, box[1] / image.height))


def _fill(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The picture scaled and centre-cropped to fill exactly `size`."""
    return ImageOps.fit(image, size, Image.Resampling.LANCZOS)


def _rounded_paste(canvas: Image.Image, picture: Image.Image, at: tuple[int, int], radius: int) -> None:
    """Paste with rounded corners, as apps show pictures."""
    mask = Image.new("L", picture.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, picture.width - 1, picture.height - 1), radius, fill=255)
    canvas.paste(picture, at, mask)


def busy_background(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A drawn busy canvas: a gradient under dozens of overlapping shapes, lines and words."""
    w, h = size
    start, end = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    canvas = Image.fromarray(np.broadcast_to(start + (end - start) * ramp, (h, w, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.randint(30, 80)):
        x, y = rng.uniform(-0.1, 1.0) * w, rng.uniform(-0.1, 1.0) * h
        dx, dy = rng.uniform(0.02, 0.3) * w, rng.uniform(0.02, 0.3) * h
        kind = rng.random()
        if kind < 0.35:
            draw.ellipse((x, y, x + dx, y + dy), fill=_colour(rng))
        elif kind < 0.6:
            draw.rectangle((x, y, x + dx, y + dy), fill=_colour(rng), outline=_colour(rng), width=rng.randint(0, 4))
        elif kind < 0.8:
            draw.line((x, y, x + dx, y + dy), fill=_colour(rng), width=rng.randint(1, 12))
        else:
            draw.text((x, y), _words(rng, 1, 3), font=_font(round(dy / 3)), fill=_colour(rng))
    if rng.random() < 0.5:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 4.0)))
    return canvas


def _paste_at_random(
    canvas: Image.Image, picture: Image.Image, rng: random.Random, shares: tuple[float, float] = (0.3, 0.7)
) -> Image.Image:
    """The picture at a share of the canvas's size (per side, aspect kept; 30–70 % by default) at a random
    place, plain, on a white photo-print frame or with a drop shadow."""
    share = rng.uniform(*shares)
    picture = _fit(picture, (round(canvas.width * share), round(canvas.height * share)))
    style = rng.random()
    if style < 0.3:
        border = max(2, round(min(picture.size) * 0.04))
        picture = ImageOps.expand(picture, border, fill=(250, 250, 250))
    x, y = rng.randint(0, canvas.width - picture.width), rng.randint(0, canvas.height - picture.height)
    canvas = canvas.copy()
    if style > 0.7:
        offset = max(3, round(min(picture.size) * 0.03))
        shadow = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(shadow).rectangle(
            (x + offset, y + offset, x + offset + picture.width, y + offset + picture.height), fill=140
        )
        shadow = shadow.filter(ImageFilter.GaussianBlur(offset))
        canvas = Image.composite(Image.new("RGB", canvas.size, (0, 0, 0)), canvas, shadow)
    canvas.paste(picture, (x, y))
    return _marked(canvas, (x, y, x + picture.width, y + picture.height))


def _canvas_size(rng: random.Random) -> tuple[int, int]:
    """A typical upload's size: landscape, portrait or square, 800–1280 px on the long side."""
    long = rng.randint(800, 1280)
    short = round(long * rng.choice((0.5625, 0.75, 0.8, 1.0)))
    return (long, short) if rng.random() < 0.6 else (short, long)


def paste_on_photo(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Pasted at 30–70 % size at a random place onto another photograph."""
    return _paste_at_random(_fill(others(rng), _canvas_size(rng)), image, rng)


def paste_small(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Pasted at 20–30 % size at a random place onto another photograph: a sticker-sized copy."""
    return _paste_at_random(_fill(others(rng), _canvas_size(rng)), image, rng, (0.2, 0.3))


def paste_on_busy(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Pasted at 30–70 % size at a random place onto a drawn busy canvas."""
    return _paste_at_random(busy_background(_canvas_size(rng), rng), image, rng)


def paste_at_edge(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Pasted at 30–70 % size onto another photograph against its edge: in a corner, or against one side,
    as it is or partly outside the photo (up to a third of the picture cut off)."""
    canvas = _fill(others(rng), _canvas_size(rng))
    share = rng.uniform(0.3, 0.7)
    picture = _fit(image, (round(canvas.width * share), round(canvas.height * share)))
    right, bottom = canvas.width - picture.width, canvas.height - picture.height
    x, y = rng.randint(0, right), rng.randint(0, bottom)
    if rng.random() < 0.4:
        x, y = rng.choice((0, right)), rng.choice((0, bottom))
    else:
        outside = rng.choice((0.0, rng.uniform(0.05, 0.33)))
        side = rng.randrange(4)
        if side < 2:
            x = -round(outside * picture.width) if side == 0 else right + round(outside * picture.width)
        else:
            y = -round(outside * picture.height) if side == 2 else bottom + round(outside * picture.height)
    canvas = canvas.copy()
    canvas.paste(picture, (x, y))
    return _marked(canvas, (x, y, x + picture.width, y + picture.height))


def paste_turned(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Pasted at 40–70 % size onto another photograph turned by 5–20° either way, plain or on a white
    photo-print border (a print laid on a table, a scrapbook page)."""
    canvas = _fill(others(rng), _canvas_size(rng))
    share = rng.uniform(0.4, 0.7)
    picture = _fit(image, (round(canvas.width * share), round(canvas.height * share)))
    if rng.random() < 0.5:
        picture = ImageOps.expand(picture, max(2, round(min(picture.size) * 0.04)), fill=(250, 250, 250))
    angle = rng.uniform(5.0, 20.0) * rng.choice((-1, 1))
    turned = picture.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    mask = Image.new("L", picture.size, 255).rotate(angle, Image.Resampling.BICUBIC, expand=True)
    x = rng.randint(0, max(0, canvas.width - turned.width))
    y = rng.randint(0, max(0, canvas.height - turned.height))
    canvas = canvas.copy()
    canvas.paste(turned, (x, y), mask)
    return _marked(canvas, (x, y, x + turned.width, y + turned.height))


def _phone_chrome(
    draw: ImageDraw.ImageDraw, size: tuple[int, int], ink: tuple[int, int, int], rng: random.Random
) -> int:
    """Status bar (time, signal, battery) across the top; returns its height."""
    w, h = size
    bar = round(h * 0.035)
    draw.text(
        (w * 0.05, bar * 0.15), f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}", font=_font(bar * 2 // 3), fill=ink
    )
    for i in range(4):
        x = w * 0.74 + i * bar * 0.3
        draw.rectangle((x, bar * (0.75 - 0.12 * i), x + bar * 0.2, bar * 0.8), fill=ink)
    draw.rounded_rectangle((w * 0.86, bar * 0.3, w * 0.94, bar * 0.75), 3, outline=ink, width=2)
    return bar


def _avatar(
    canvas: Image.Image, centre: tuple[float, float], radius: float, rng: random.Random, others: Others
) -> None:
    """A round avatar: another photo's face, or an initial on a colour."""
    side = max(4, round(2 * radius))
    x, y = round(centre[0] - radius), round(centre[1] - radius)
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, side - 1, side - 1), fill=255)
    if rng.random() < 0.6:
        face = _fill(others(rng), (side, side))
    else:
        face = Image.new("RGB", (side, side), _colour(rng))
        ImageDraw.Draw(face).text((side * 0.3, side * 0.15), rng.choice("ABCDEFGHJKMNPRSTW"), font=_font(side * 2 // 3))
    canvas.paste(face, (x, y), mask)


def _text_lines(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    size: int,
    ink: tuple[int, int, int],
    rng: random.Random,
) -> float:
    """Lines of chat-like text filling a box from its top; returns where they ended."""
    left, top, right, bottom = box
    y = top
    while y + size < bottom:
        text = _words(rng, 2, 8).lower()
        font = _font(size)
        while len(text) > 3 and draw.textlength(text, font=font) > right - left:
            text = text[: len(text) * 3 // 4]
        draw.text((left, y), text, font=font, fill=ink)
        y += size * 1.5
    return y


def _icons(
    draw: ImageDraw.ImageDraw, y: float, left: float, size: float, ink: tuple[int, int, int], count: int
) -> None:
    """A row of outlined action icons (like, comment, share)."""
    for i in range(count):
        x = left + i * size * 1.8
        if i % 3 == 0:
            draw.ellipse((x, y, x + size, y + size), outline=ink, width=2)
        elif i % 3 == 1:
            draw.rounded_rectangle((x, y, x + size, y + size * 0.8), size // 4, outline=ink, width=2)
        else:
            draw.polygon([(x, y + size), (x + size, y + size / 2), (x, y)], outline=ink, width=2)


def _feed(image: Image.Image, rng: random.Random, others: Others, size: tuple[int, int]) -> Image.Image:
    """A social feed: posts with avatar, name, picture, action icons and caption; the picture in
    one post, other posts' pictures above and below, scrolled so either may be cut."""
    w, h = size
    dark = rng.random() < 0.4
    bg, ink = ((0, 0, 0), (235, 235, 235)) if dark else ((255, 255, 255), (30, 30, 30))
    canvas = Image.new("RGB", (w, 3 * h), bg)
    draw = ImageDraw.Draw(canvas)
    y, placed = 0.0, 0.0
    for post in range(3):
        _avatar(canvas, (w * 0.07, y + w * 0.06), w * 0.04, rng, others)
        draw.text((w * 0.14, y + w * 0.04), _words(rng, 1, 2).lower(), font=_font(round(w * 0.035)), fill=ink)
        y += w * 0.12
        picture = image if post == 1 else others(rng)
        width = round(w * rng.choice((1.0, 1.0, 0.94)))
        shown = _fill(picture, (width, round(width * rng.choice((1.0, 1.25, 0.75))))) if rng.random() < 0.5 else None
        shown = shown or _fit(picture, (width, round(width * 1.25)))
        canvas.paste(shown, ((w - shown.width) // 2, round(y)))
        if post == 1:
            placed = y + shown.height / 2
            box = ((w - shown.width) // 2, round(y), (w - shown.width) // 2 + shown.width, round(y) + shown.height)
        y += shown.height + w * 0.02
        _icons(draw, y, w * 0.04, w * 0.06, ink, rng.randint(3, 4))
        y += w * 0.09
        y = _text_lines(draw, (w * 0.04, y, w * 0.96, y + w * rng.uniform(0.05, 0.2)), round(w * 0.03), ink, rng)
        y += w * 0.05
    top = round(min(max(0.0, placed - h * rng.uniform(0.35, 0.65)), canvas.height - h))
    screen = canvas.crop((0, top, w, top + h))
    bar_bottom = h * 0.035 + h * 0.06
    draw = ImageDraw.Draw(screen)
    draw.rectangle((0, 0, w, h * 0.035 + h * 0.06), fill=bg)
    bar = _phone_chrome(draw, size, ink, rng)
    draw.text(
        (w * 0.04, bar + h * 0.01), rng.choice(("Instapic", "Snapfeed", "Pictr")), font=_font(round(h * 0.03)), fill=ink
    )
    draw.rectangle((0, h - h * 0.06, w, h), fill=bg)
    _icons(draw, h - h * 0.045, w * 0.08, w * 0.06, ink, 5)
    return _marked(screen, (box[0], max(box[1] - top, bar_bottom), box[2], min(box[3] - top, h * 0.94)))


def _chat(image: Image.Image, rng: random.Random, others: Others, size: tuple[int, int]) -> Image.Image:
    """A messenger: doodled wallpaper, text bubbles, and the picture in a rounded bubble with a time stamp."""
    w, h = size
    wallpaper = Image.new("RGB", size, tuple(rng.randint(180, 240) for _ in range(3)))
    draw = ImageDraw.Draw(wallpaper)
    tint = tuple(max(0, c - 25) for c in wallpaper.getpixel((0, 0)))  # type: ignore[union-attr]
    for _ in range(120):
        x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 30)
        draw.arc((x, y, x + s, y + s), rng.randint(0, 360), rng.randint(0, 360), fill=tint, width=2)
    ink = (20, 20, 20)
    bar = _phone_chrome(draw, size, ink, rng)
    draw.rectangle((0, bar, w, bar + h * 0.07), fill=(245, 245, 245))
    _avatar(wallpaper, (w * 0.12, bar + h * 0.035), h * 0.025, rng, others)
    draw.text((w * 0.2, bar + h * 0.02), _words(rng, 1, 2).lower(), font=_font(round(h * 0.025)), fill=ink)
    y = bar + h * 0.09
    picture_at = rng.randint(0, 2)
    box = (0.0, 0.0, 0.0, 0.0)
    for turn in range(6):
        if y > h * 0.88:
            break
        mine = rng.random() < 0.5
        colour = (220, 248, 198) if mine else (255, 255, 255)
        if turn == picture_at:
            shown = _fit(image, (round(w * rng.uniform(0.55, 0.75)), round(h * 0.45)))
            bubble = Image.new("RGB", (shown.width + 12, shown.height + 12), colour)
            bubble.paste(shown, (6, 6))
            bw = ImageDraw.Draw(bubble)
            bw.text(
                (bubble.width - 70, bubble.height - 28),
                f"{rng.randint(1, 12)}:{rng.randint(10, 59)}",
                font=_font(18),
                fill=(250, 250, 250),
            )
            x = w - bubble.width - w * 0.03 if mine else w * 0.03
            _rounded_paste(wallpaper, bubble, (round(x), round(y)), 14)
            box = (round(x) + 6, round(y) + 6, round(x) + 6 + shown.width, round(y) + 6 + shown.height)
            y += bubble.height + h * 0.015
            continue
        lines = rng.randint(1, 3)
        width = w * rng.uniform(0.4, 0.75)
        x = w - width - w * 0.03 if mine else w * 0.03
        draw.rounded_rectangle((x, y, x + width, y + lines * h * 0.03 + h * 0.02), 14, fill=colour)
        _text_lines(
            draw, (x + 12, y + h * 0.01, x + width - 12, y + lines * h * 0.03 + h * 0.01), round(h * 0.018), ink, rng
        )
        y += lines * h * 0.03 + h * 0.035
    draw.rectangle((0, h * 0.93, w, h), fill=(245, 245, 245))
    draw.rounded_rectangle((w * 0.05, h * 0.94, w * 0.8, h * 0.985), 20, fill=(255, 255, 255), outline=(200, 200, 200))
    return _marked(wallpaper, box)


def _story(image: Image.Image, rng: random.Random, others: Others, size: tuple[int, int]) -> Image.Image:
    """A story: a blurred photo behind, the picture large (perhaps tilted), stickers of text, progress bars."""
    w, h = size
    backdrop = others(rng) if rng.random() < 0.5 else image
    canvas = _fill(backdrop, size).filter(ImageFilter.GaussianBlur(rng.uniform(12, 30)))
    shown = _fit(image, (round(w * rng.uniform(0.7, 0.95)), round(h * 0.6)))
    tilt = rng.uniform(-8, 8) if rng.random() < 0.4 else 0.0
    if tilt:
        mask = Image.new("L", shown.size, 255).rotate(tilt, expand=True)
        shown = shown.rotate(tilt, Image.Resampling.BICUBIC, expand=True)
    else:
        mask = Image.new("L", shown.size, 255)
    left, top = (w - shown.width) // 2, round(h * rng.uniform(0.15, 0.3))
    canvas.paste(shown, (left, top), mask)
    box = (left, top, left + shown.width, top + shown.height)
    draw = ImageDraw.Draw(canvas)
    for i in range(rng.randint(2, 5)):
        draw.rectangle((w * 0.02 + i * w * 0.2, h * 0.01, w * 0.2 + i * w * 0.2, h * 0.015), fill=(240, 240, 240))
    for _ in range(rng.randint(1, 3)):
        text, size_px = _words(rng, 1, 4), round(h * rng.uniform(0.025, 0.05))
        x, y = rng.uniform(0.02, 0.5) * w, rng.uniform(0.05, 0.9) * h
        draw.rounded_rectangle(
            (x - 8, y - 6, x + draw.textlength(text, font=_font(size_px)) + 8, y + size_px + 10), 10, fill=_colour(rng)
        )
        draw.text((x, y), text, font=_font(size_px), fill=(255, 255, 255))
    draw.rounded_rectangle((w * 0.04, h * 0.93, w * 0.8, h * 0.98), 25, outline=(240, 240, 240), width=2)
    return _marked(canvas, box)


def app_screenshot(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """A phone screenshot of an app: a social feed, a chat or a story, with status bar, avatars,
    buttons, text and other people's pictures; no flat canvas around the picture."""
    size = rng.choice(((720, 1280), (750, 1334), (828, 1792)))
    layout = rng.choice((_feed, _chat, _story))
    return layout(image, rng, others, size)


def _collage(cells: int) -> CompositeEdit:
    """A cells×cells grid of photos, the picture in one cell at random."""

    def edit(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
        side = rng.randint(900, 1280)
        gutter = rng.choice((0, 0, 4, 8, 16))
        cell = (side - gutter * (cells + 1)) // cells
        canvas = Image.new("RGB", (side, side), rng.choice(((255, 255, 255), (0, 0, 0), _colour(rng))))
        mine = rng.randrange(cells * cells)
        for position in range(cells * cells):
            tile = _fill(image if position == mine else others(rng), (cell, cell))
            row, column = divmod(position, cells)
            canvas.paste(tile, (gutter + column * (cell + gutter), gutter + row * (cell + gutter)))
        row, column = divmod(mine, cells)
        left, top = gutter + column * (cell + gutter), gutter + row * (cell + gutter)
        return _marked(canvas, (left, top, left + cell, top + cell))

    edit.__doc__ = f"A {cells}×{cells} collage of photos, the picture (cropped square) in one cell."
    return edit


def pair(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Two photos side by side or one above the other (before-and-after posts, comparison memes), the
    picture first or second: both cropped square, or both at one height (width) with their shapes kept."""
    other = others(rng)
    stacked, square = rng.random() < 0.5, rng.random() < 0.5
    side, gutter = rng.randint(400, 700), rng.choice((0, 0, 4, 8))
    if square:
        parts = [_fill(picture, (side, side)) for picture in (image, other)]
    elif stacked:
        parts = [_scaled(picture, side / picture.width) for picture in (image, other)]
    else:
        parts = [_scaled(picture, side / picture.height) for picture in (image, other)]
    mine = rng.randrange(2)
    if mine:
        parts.reverse()
    first, second = parts
    if stacked:
        size, at = (side, first.height + gutter + second.height), (0, first.height + gutter)
    else:
        size, at = (first.width + gutter + second.width, side), (first.width + gutter, 0)
    canvas = Image.new("RGB", size, rng.choice(((255, 255, 255), (0, 0, 0))))
    canvas.paste(first, (0, 0))
    canvas.paste(second, at)
    left, top = at if mine else (0, 0)
    return _marked(canvas, (left, top, left + parts[mine].width, top + parts[mine].height))


def meme(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Meme format: a white caption block above (sometimes another below), black text, the picture
    resized to a typical width."""
    picture = _scaled(image, rng.randint(500, 900) / image.width)
    w = picture.width
    font_size = round(w * rng.uniform(0.05, 0.08))
    lines = rng.randint(1, 3)
    top = round(lines * font_size * 1.3 + font_size)
    bottom = top // 2 if rng.random() < 0.3 else 0
    canvas = Image.new("RGB", (w, top + picture.height + bottom), (255, 255, 255))
    canvas.paste(picture, (0, top))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for line in range(lines):
        text = _words(rng, 2, 6).lower()
        while len(text) > 3 and draw.textlength(text, font=font) > w * 0.95:
            text = text[: len(text) * 3 // 4]
        draw.text((w * 0.03, font_size / 2 + line * font_size * 1.3), text, font=font, fill=(0, 0, 0))
    if bottom:
        draw.text(
            (w * 0.03, top + picture.height + bottom * 0.2),
            "@" + _words(rng, 1, 1).lower(),
            font=_font(bottom // 2),
            fill=(90, 90, 90),
        )
    return _marked(canvas, (0, top, w, top + picture.height))


def _moire(size: tuple[int, int], rng: random.Random) -> np.ndarray:
    """A screen's interference pattern: two near-pixel-pitch sine gratings, as a brightness factor."""
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pattern = np.ones((h, w), np.float32)
    for _ in range(2):
        angle, period = rng.uniform(0, np.pi), rng.uniform(2.2, 4.0)
        phase = (x * np.cos(angle) + y * np.sin(angle)) * (2 * np.pi / period)
        pattern *= 1.0 - rng.uniform(0.05, 0.15) * (0.5 + 0.5 * np.sin(phase))
    return pattern


def screen_photo(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """A photo of a screen showing the picture: dark bezel, seen at an angle (perspective), on a
    desk or room photo, with moiré, glare, blur, noise and a phone camera's JPEG."""
    size = _canvas_size(rng)
    backdrop = _fill(others(rng), size) if rng.random() < 0.6 else busy_background(size, rng)
    bezel = max(4, round(min(image.size) * rng.uniform(0.03, 0.08)))
    screen = ImageOps.expand(image, bezel, fill=tuple(rng.randint(5, 40) for _ in range(3)))
    w, h = size
    share = rng.uniform(0.55, 0.9)
    box_w, box_h = _fit(screen, (round(w * share), round(h * share))).size
    left, top = rng.uniform(0, w - box_w), rng.uniform(0, h - box_h)
    jitter = [rng.uniform(-0.12, 0.12) for _ in range(8)]
    corners = [
        (left + jitter[0] * box_w, top + jitter[1] * box_h),
        (left + box_w + jitter[2] * box_w, top + jitter[3] * box_h),
        (left + box_w + jitter[4] * box_w, top + box_h + jitter[5] * box_h),
        (left + jitter[6] * box_w, top + box_h + jitter[7] * box_h),
    ]
    warped = warp(screen, corners, size, (0, 0, 0))
    mask = warp(Image.new("L", screen.size, 255), corners, size, 0)
    photo = Image.composite(warped, backdrop, mask)
    pixels = np.asarray(photo, dtype=np.float32) * _moire(size, rng)[..., None]
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    cx, cy = rng.uniform(0, size[0]), rng.uniform(0, size[1])
    glare = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.25 * max(size)) ** 2)))
    pixels = pixels * rng.uniform(0.8, 1.05) + rng.uniform(20, 60) * glare[..., None]
    pixels += np.random.default_rng(rng.getrandbits(64)).normal(0.0, rng.uniform(2, 6), pixels.shape)
    photo = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return _marked(_jpeg_roundtrip(photo, rng.randint(70, 90)), (min(xs), min(ys), max(xs), max(ys)))


COMPOSITES_IN_CHAINS = ("paste_on_photo", "paste_on_busy", "app_screenshot", "collage_2x2", "meme", "screen_photo")
CHAIN_COMPANIONS = (
    "crop_10",
    "crop_30",
    "resize_jpeg",
    "thumbnail_q30",
    "colour_jitter",
    "flip_h",
    "rotate_small",
    "text_caption",
    "emoji_overlay",
    "blur",
)


def chain_with_composite(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """Two or three edits, one of them a composite; each other one (a crop, a thumbnail, a colour
    change, a flip, ...) applied to the picture before it is composited or to the composite after."""
    composite = COMPOSITE_FAMILIES[rng.choice(COMPOSITES_IN_CHAINS)]
    companions = rng.sample(CHAIN_COMPANIONS, rng.randint(1, 2))
    after = [name for name in companions if rng.random() < 0.5]
    for name in companions:
        if name not in after:
            image = EDIT_FAMILIES[name](image, rng)
    image = composite(image.convert("RGB"), rng, others)
    for name in after:
        image = EDIT_FAMILIES[name](image.convert("RGB"), rng)
    return image


ANIMATION_SIDE = 480
"""Long side of an animation's frames: what animated GIFs are commonly made at."""


def animation(image: Image.Image, rng: random.Random, others: Others) -> Image.Image:
    """The picture as one frame, never the first, of a short animation of other photos (4–8 frames of
    0.2–0.5 s, ANIMATION_SIDE on the long side) saved as a 256-colour GIF or a lossy WebP: an upload whose
    first frame shows something else. Its first frame, carrying the file's bytes for `encode_edited`."""
    scale = ANIMATION_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    frames = [_fill(others(rng), size) for _ in range(rng.randint(3, 7))]
    frames.insert(rng.randint(1, len(frames)), image.resize(size, Image.Resampling.LANCZOS))
    image_format = rng.choice(("GIF", "WEBP"))
    options = {"quality": rng.randint(60, 90)} if image_format == "WEBP" else {}
    buffer = io.BytesIO()
    duration = rng.choice((200, 300, 500))
    frames[0].save(buffer, image_format, save_all=True, append_images=frames[1:], duration=duration, loop=0, **options)
    return _decoded(buffer.getvalue())


def drawn_others(rng: random.Random) -> Image.Image:
    """Busy drawn pictures standing in for other photos where none are given."""
    return busy_background(_canvas_size(rng), rng)


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
    "crop_70": _crop_family(0.70),
    "rotate_large": rotate_large,
    "perspective": perspective,
}
"""Every edit family of one picture alone by name, in the order reports list them."""

COMPOSITE_FAMILIES: dict[str, CompositeEdit] = {
    "paste_on_photo": paste_on_photo,
    "paste_on_busy": paste_on_busy,
    "paste_at_edge": paste_at_edge,
    "paste_turned": paste_turned,
    "paste_small": paste_small,
    "app_screenshot": app_screenshot,
    "collage_2x2": _collage(2),
    "collage_3x3": _collage(3),
    "pair": pair,
    "meme": meme,
    "screen_photo": screen_photo,
    "chain_composite": chain_with_composite,
    "animation": animation,
}
"""Edits that put the picture inside a larger picture made of other photos and drawn UI."""

ANIMATED_FAMILIES = ("animation",)
"""Composites whose picture is a frame of an animation rather than a part of one picture: what their check
costs is the frames', not the search inside a picture."""

FAMILIES = (*EDIT_FAMILIES, *COMPOSITE_FAMILIES)
"""Every family's name, composites last."""

SIMPLE_FAMILIES: dict[str, Edit] = {
    name: edit
    for name, edit in EDIT_FAMILIES.items()
    if name
    in (
        "resize_jpeg",
        "crop_10",
        "crop_30",
        "crop_50",
        "pad_border",
        "rotate_small",
        "rotate_90",
        "flip_h",
        "aspect",
        "colour_jitter",
        "grayscale",
        "blur",
        "noise",
        "text_caption",
        "emoji_overlay",
        "watermark",
    )
}
"""Families that `combo_2` and `combo_3` draw from (no thumbnail, screenshot, combos, or the
families added later, so the combos stay what they were)."""


def apply_edit(name: str, image: Image.Image, rng: random.Random, others: Others = drawn_others) -> Image.Image:
    """Apply the named edit family to an RGB picture, deterministically given `rng`; composites
    take their other photos from `others` (drawn busy pictures by default)."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    if name in EDIT_FAMILIES:
        return EDIT_FAMILIES[name](image, rng)
    if name in COMPOSITE_FAMILIES:
        return COMPOSITE_FAMILIES[name](image, rng, others)
    raise KeyError(f"unknown edit family {name!r}; expected one of {', '.join(FAMILIES)}")

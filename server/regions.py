"""Finding pictures inside a larger picture: screenshots, padded borders, UI chrome, a fill a
picture was turned on, collages, photos a picture was pasted onto, a screen photographed at an angle
(`find_regions` runs them all).

A copy pasted small into a screenshot (status bar, header, text lines, navigation bar)
or framed by a solid border keeps only part of its global embedding; embedding the
picture's own box as well recovers it. `content_box` finds that box, or says there is
none, from a grayscale copy at most WORK_SIDE pixels on its long side (a few ms):

1. Canvas: flat pixels (equal, within FLAT_STEP, to both neighbours along a row or a
   column, so that 1-pixel gaps and margins count) whose grey level is within
   CANVAS_SPREAD of one of the few dominant levels of the image's flat edge pixels,
   in connected regions that touch the edge, plus the 1-pixel halo of the same colour.
   A constant surround is what pasting produces; a sky or a wall drifts in level and
   is cut off where it leaves the colour band.
2. Picture: the largest 8-connected region of everything else (text lines, icons and
   stickers are separate, smaller regions), its bounding box then peeled, outermost
   row or column first, while that line is less than TRIM_SHARE picture (bar edges,
   text lines glued on by a 1-pixel gap, stickers overlapping the frame).
3. Checks: the box covers MIN_AREA..MAX_AREA of the image; at least MIN_FILL of it is
   not canvas; each side not at the image's edge has, within RING_DEPTH pixels
   outside (room for JPEG ringing), a line at least RING_SHARE canvas-coloured (a
   straight frame, not a cut through the scene); and at least MIN_BOUNDED_SIDES side is
   framed that way: a meme's caption block frames its picture on one side only.

Noise-textured borders are not canvas here (they are not flat), so those pads give None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

Box = tuple[int, int, int, int]
Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]
"""Corners top-left, top-right, bottom-right, bottom-left, in the image's pixels."""

WORK_SIDE = 256
"""Long side of the grey copy analysed; a 10 px gap in a 1280 px screenshot is 2 px here."""
MIN_SIDE = 32
"""Images smaller than this on either side are never split."""
FLAT_STEP = 3
"""Grey levels two neighbours may differ by and still count as flat (JPEG noise on a flat colour)."""
CANVAS_SPREAD = 2
"""Grey levels a canvas pixel may lie from its canvas colour."""
MIN_EDGE_SHARE = 0.05
"""A canvas colour covers at least this share of the image's edge pixels."""
MAX_CANVAS_COLOURS = 4
"""Canvas colours tried, most common on the edge first (background, bars, margins)."""
MIN_CANVAS_REGION = 0.005
"""A canvas region covers at least this share of the image."""
TRIM_SHARE = 0.5
"""A box's outermost line is peeled off while less than this share of it is picture."""
MIN_AREA, MAX_AREA = 0.08, 0.85
"""Share of the image a picture box may cover."""
MIN_FILL = 0.9
"""Share of the box that must not be canvas."""
RING_DEPTH = 6
"""Lines outside a side searched for the frame (JPEG ringing smears 8 px blocks next to an edge)."""
RING_SHARE = 0.8
"""Share of a frame line that must be canvas-coloured."""
EDGE_TOLERANCE = 2
"""A side this close to the image's edge is taken as the edge (margins of 1-2 px)."""
MIN_BOUNDED_SIDES = 1
"""Sides that must be framed by canvas. One is enough: a photo whose flat sky tops the scene fails the
straight frame line or MIN_FILL (4 of 393 corpus photos get a box, 1 when two sides were asked; memes whose
caption block is above only, 0.28 -> 0.69 boxed)."""

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def content_box(rgb: Image.Image) -> Box | None:
    """(left, top, right, bottom) of the main picture when the image looks like a picture
    embedded in a larger flat or UI-like canvas, in the image's pixels; else None."""
    if min(rgb.size) < MIN_SIDE:
        return None
    return _content_box(*work_gray(rgb), rgb.size)


def _content_box(gray: np.ndarray, scale: float, size: tuple[int, int]) -> Box | None:
    found, _ = locate(gray)
    if found is None:
        return None
    top, bottom, left, right = found
    width, height = size
    return (
        max(0, round(left / scale)),
        max(0, round(top / scale)),
        min(width, round(right / scale)),
        min(height, round(bottom / scale)),
    )


def work_gray(rgb: Image.Image, size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """The grey copy analysed (int16, long side at most WORK_SIDE) and its scale: of `rgb`, or of an
    image of `size` that `rgb` is a smaller copy of."""
    return _gray_copy(rgb, size or rgb.size, WORK_SIDE, np.int16)


def _gray_copy(picture: Image.Image, size: tuple[int, int], long_side: int, dtype: type) -> tuple[np.ndarray, float]:
    """A grey copy of an image of `size` at most `long_side` long, made from `picture` (that image or any
    smaller copy of it), and its scale against `size`."""
    scale = min(1.0, long_side / max(size))
    return np.asarray(_gray_picture(picture, size, scale), dtype=dtype), scale


def _gray_picture(picture: Image.Image, size: tuple[int, int], scale: float) -> Image.Image:
    """A grey copy, at `scale` of an image of `size`, of `picture` (that image or a smaller copy)."""
    return _small_copy(picture if picture.mode == "L" else picture.convert("L"), size, scale)


def _small_copy(picture: Image.Image, size: tuple[int, int], scale: float) -> Image.Image:
    """`picture` (an image of `size` or a smaller copy of it) at `scale` of `size`, its mode kept."""
    target = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if target != picture.size:
        factor = min(picture.size[0] // target[0], picture.size[1] // target[1])
        if factor >= 2:
            picture = picture.reduce(factor)  # cheap integer box first, the exact size after
        picture = picture.resize(target, Image.Resampling.BOX)
    return picture


def locate(g: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str]:
    """(top, bottom, left, right) of the picture in the grey copy, or None with the reason."""
    h, w = g.shape
    if min(h, w) < 8:
        return None, "small"
    canvas, colours = canvas_mask(g, least=1.0 - MAX_AREA)  # all its colours when it is large enough
    if not colours:
        return None, "no canvas"
    if canvas.mean() < 1.0 - MAX_AREA:
        return None, "little canvas"
    content = ~canvas
    labels, count = ndimage.label(content, _EIGHT)
    if count == 0:
        return None, "no content"
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    main = labels == int(sizes.argmax())
    rows = np.flatnonzero(main.any(axis=1))
    cols = np.flatnonzero(main.any(axis=0))
    top, bottom, left, right = _peel(main, int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    if not MIN_AREA <= (bottom - top) * (right - left) / (h * w) <= MAX_AREA:
        return None, "area"
    if content[top:bottom, left:right].mean() < MIN_FILL:
        return None, "fill"
    coloured = np.zeros(g.shape, dtype=bool)
    for colour in colours:
        coloured |= np.abs(g - colour) <= CANVAS_SPREAD
    steps = range(RING_DEPTH)
    sides = (
        (top, [coloured[top - 1 - d, left:right] for d in steps if top - 1 - d >= 0]),
        (h - bottom, [coloured[bottom + d, left:right] for d in steps if bottom + d < h]),
        (left, [coloured[top:bottom, left - 1 - d] for d in steps if left - 1 - d >= 0]),
        (w - right, [coloured[top:bottom, right + d] for d in steps if right + d < w]),
    )
    bounded = 0
    for gap, lines in sides:
        if gap <= EDGE_TOLERANCE:
            continue
        if max(float(line.mean()) for line in lines) < RING_SHARE:
            return None, "unframed side"
        bounded += 1
    if bounded < MIN_BOUNDED_SIDES:
        return None, "too few framed sides"
    return (top, bottom, left, right), "ok"


def canvas_mask(g: np.ndarray, least: float = 0.0) -> tuple[np.ndarray, list[int]]:
    """Pixels of flat one-colour regions touching the image's edge, and those colours. Labelling the
    regions is most of the cost, so with `least` (a share of the image) it stops, with what it has, once
    the canvas can no longer cover that much: what it has plus every pixel near the colours still to try
    (`canvas_bound`) falls short."""
    flat = _flat(g)
    edge = _edge(g.shape)
    canvas = np.zeros(g.shape, dtype=bool)
    colours: list[int] = []
    candidates = canvas_colours(g, flat)
    near_counts = _near_counts(g, candidates)
    for i, colour in enumerate(candidates):
        if (int(canvas.sum()) + sum(near_counts[i:])) / g.size < least:
            break
        near = np.abs(g - colour) <= CANVAS_SPREAD
        labels, count = ndimage.label(near & flat, _FOUR)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        touching = np.zeros(count + 1, dtype=bool)
        touching[labels[edge]] = True
        keep = touching & (sizes >= MIN_CANVAS_REGION * g.size)
        keep[0] = False
        if not keep.any():
            continue
        core = keep[labels]
        # the canvas pixels right beside an edge are not flat but still have the canvas colour
        canvas |= core | (near & _grow(core))
        colours.append(colour)
    return canvas, colours


def _edge(shape: tuple[int, ...]) -> np.ndarray:
    """The image's outermost rows and columns."""
    edge = np.zeros(shape, dtype=bool)
    edge[[0, -1]] = True
    edge[:, [0, -1]] = True
    return edge


def canvas_bound(g: np.ndarray, colours: list[int]) -> float:
    """Share of the image within CANVAS_SPREAD of one of `colours` (the colours a canvas may have, more
    than 2 CANVAS_SPREAD apart): the most the canvas may cover, from a histogram alone."""
    return sum(_near_counts(g, colours)) / g.size


def _near_counts(g: np.ndarray, colours: list[int]) -> list[int]:
    """Pixels within CANVAS_SPREAD of each colour."""
    levels = np.bincount(g.ravel(), minlength=256)
    return [int(levels[max(0, colour - CANVAS_SPREAD) : colour + CANVAS_SPREAD + 1].sum()) for colour in colours]


def canvas_colours(g: np.ndarray, flat: np.ndarray | None = None) -> list[int]:
    """The grey levels a canvas may have: the densest levels of the edge's flat pixels (counting those
    within CANVAS_SPREAD), each on at least MIN_EDGE_SHARE of the edge, at most MAX_CANVAS_COLOURS."""
    edge = _edge(g.shape)
    levels = g[edge & (_flat(g) if flat is None else flat)]
    if levels.size == 0:
        return []
    band = np.convolve(np.bincount(levels, minlength=256), np.ones(2 * CANVAS_SPREAD + 1), mode="same")
    edge_count = int(edge.sum())
    colours: list[int] = []
    for _ in range(MAX_CANVAS_COLOURS):
        colour = int(band.argmax())
        if band[colour] < MIN_EDGE_SHARE * edge_count:
            break
        band[max(0, colour - 2 * CANVAS_SPREAD) : colour + 2 * CANVAS_SPREAD + 1] = 0
        colours.append(colour)
    return colours


def _flat(g: np.ndarray) -> np.ndarray:
    """Pixels within FLAT_STEP of both neighbours along their row or along their column."""
    dx = np.abs(np.diff(g, axis=1)) > FLAT_STEP
    dy = np.abs(np.diff(g, axis=0)) > FLAT_STEP
    steep_x = np.zeros(g.shape, dtype=bool)
    steep_x[:, :-1] |= dx
    steep_x[:, 1:] |= dx
    steep_y = np.zeros(g.shape, dtype=bool)
    steep_y[:-1] |= dy
    steep_y[1:] |= dy
    return ~(steep_x & steep_y)


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask dilated by one pixel, 8-connected."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    grown = rows.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def _peel(mask: np.ndarray, top: int, bottom: int, left: int, right: int) -> tuple[int, int, int, int]:
    """Shrink the box by its outermost row or column with the lowest share of `mask`
    while that share is under TRIM_SHARE (shares from cumulative sums, O(1) a step)."""
    m = mask.astype(np.int32)
    along_rows = np.zeros((m.shape[0], m.shape[1] + 1), dtype=np.int32)
    np.cumsum(m, axis=1, out=along_rows[:, 1:])
    along_cols = np.zeros((m.shape[0] + 1, m.shape[1]), dtype=np.int32)
    np.cumsum(m, axis=0, out=along_cols[1:])
    while bottom - top > 2 and right - left > 2:
        width, height = right - left, bottom - top
        shares = (
            (along_rows[top, right] - along_rows[top, left]) / width,
            (along_rows[bottom - 1, right] - along_rows[bottom - 1, left]) / width,
            (along_cols[bottom, left] - along_cols[top, left]) / height,
            (along_cols[bottom, right - 1] - along_cols[top, right - 1]) / height,
        )
        side = min(range(4), key=shares.__getitem__)
        if shares[side] >= TRIM_SHARE:
            break
        if side == 0:
            top += 1
        elif side == 1:
            bottom -= 1
        elif side == 2:
            left += 1
        else:
            right -= 1
    return top, bottom, left, right


# A picture turned on a fill: four flat corners of one colour around a tilted rectangle ------------

TILT_RANGE = (3.0, 45.0)
"""Tilts (degrees) worth turning back: smaller ones SSCD sees through, larger ones are a quarter turn off."""
CORNER_PATCH = 3
"""Pixels on a side of the corner patches that must be flat and of one colour."""
MIN_TILTED_SHARE = 0.3
"""Share of the image the tilted picture must cover."""


def tilt(rgb: Image.Image) -> float | None:
    """Degrees to turn the image by (`Image.rotate`, counter-clockwise) to set upright a picture that
    was turned on a flat fill (the four corners flat and of one colour, the fill reaching in from
    them as triangles); None when the image does not look so, or the tilt is outside TILT_RANGE.
    The angle is fitted to the longer of the picture's two edges that meet at its topmost corner."""
    if min(rgb.size) < MIN_SIDE:
        return None
    return _tilt(work_gray(rgb)[0])


def _tilt(g: np.ndarray) -> float | None:
    k = CORNER_PATCH
    patches = [g[:k, :k], g[:k, -k:], g[-k:, :k], g[-k:, -k:]]
    levels = [float(patch.mean()) for patch in patches]
    if max(levels) - min(levels) > 2 * CANVAS_SPREAD or max(float(patch.std()) for patch in patches) > FLAT_STEP:
        return None
    near = np.abs(g - sum(levels) / 4) <= 2 * CANVAS_SPREAD
    labels, _ = ndimage.label(near, _FOUR)
    fill_labels = {int(labels[y, x]) for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1))} - {0}
    content = ~np.isin(labels, list(fill_labels))
    if content.mean() < MIN_TILTED_SHARE:
        return None
    ys, xs = np.nonzero(content)
    top_x = int(round(float(xs[ys == ys.min()].mean())))
    left_x, right_x = int(xs.min()), int(xs.max())
    # The picture's two upper edges meet at its topmost corner; fit the longer one (the first row of
    # picture in each of its columns) and fold its angle into ±45°.
    first, last = (top_x, right_x) if right_x - top_x >= top_x - left_x else (left_x, top_x)
    margin = max(1, (last - first) // 10)
    columns = np.arange(first + margin, last - margin)
    if columns.size < 4:
        return None
    first_rows = content[:, columns].argmax(axis=0)
    angle = float(np.degrees(np.arctan(np.polyfit(columns, first_rows, 1)[0])))
    angle = angle - 90.0 if angle > 45.0 else angle + 90.0 if angle < -45.0 else angle
    return angle if TILT_RANGE[0] <= abs(angle) <= TILT_RANGE[1] else None


# Pictures inside busy surroundings: frames of straight edges, and collage grids ---------------------
#
# A picture pasted onto a photograph, a post in a feed, a chat bubble or a collage tile has no flat
# canvas around it, but its sides are straight step edges: along the whole side, the rows (or
# columns) just inside differ from those just outside. On a copy FRAME_WORK_SIDE pixels long:
#
# 1. Step edges between rows: the mean of EDGE_BAND rows above and below differ by more than
#    EDGE_STEP levels, at the row where that difference peaks (±1 row), in grey or in one of two
#    opponent colour channels (red-green, yellow-blue: a pasted picture often meets its surroundings
#    in colour where their greys match), gaps of EDGE_GAP pixels bridged. Columns likewise.
# 2. Frames (`frame_boxes`): candidate lines are the MAX_LINES rows (columns) with the longest
#    runs of edge, at least MIN_LINE_RUN of the side. A line's support over a span is the share
#    of it that is edge; it counts only where it stands out by LINE_PROMINENCE from the parallel
#    lines LINE_OFFSETS pixels away on at least one side (a boundary, not a texture). A frame is a
#    rectangle of candidate lines and the image's border covering FRAME_AREA of the image: either all
#    four sides on lines, each supported at least MIN_SIDE_SUPPORT and on average MIN_MEAN_SUPPORT; or
#    a picture in a corner or cut off by the image's edge, two adjacent sides or three on lines, each
#    supported at least EDGE_FRAME_SUPPORT and each ending where the next one meets it (for
#    END_LENGTH beyond that corner it is END_MARGIN less edge). A frame that a line crosses whole may
#    be two pictures, or one with a horizon of its own: it comes after every frame no line crosses.
# 3. Grids (`grid_cells`): a collage of 2 or 3 rows by 2 or 3 columns has a boundary near each
#    i/n of the side (within GRID_WINDOW), a line covering at least GRID_COVER of the whole side
#    more than the lines a few pixels off it on one side; the best-covered grid wins. Where none is
#    found, two pictures side by side or one above the other, their one boundary at the middle
#    covering PAIR_COVER.

FRAME_WORK_SIDE = 320
"""Long side of the copy frames and grids are looked for on (a 10 px seam of a 1280 px image is 2-3 px)."""
EDGE_BAND = 3
"""Rows averaged on each side of a candidate edge: enough to smooth texture, not a seam."""
EDGE_STEP = 18.0
"""Grey levels the two bands must differ by."""
EDGE_GAP = 2
"""Gaps along an edge bridged (JPEG blocks, rounded corners, a similar colour on both sides)."""
MAX_LINES = 24
"""Candidate lines kept per direction, longest runs first. A small picture's sides run short, and a busy
photo's longer lines outranked one of them for most of the small pastes missed at 16 (held out, paste_small
0.678 → 0.729 caught at 24, paste_on_photo 0.932 → 0.958; plain photos with a frame 109 → 125 of 393)."""
MIN_LINE_RUN = 0.08
"""A candidate line's longest run of edge, as a share of the side. A picture pasted at a fifth of the side
often meets its surroundings in the same grey along part of a side: half its side is a tenth of the image's."""
LINE_OFFSETS = (3, 4, 5, 6)
"""Parallel lines (pixels away) a frame's side must stand out from."""
LINE_PROMINENCE = 0.35
"""How much more of a side is edge than of the parallel lines beside it (on its quieter side)."""
MIN_SIDE_SUPPORT, MIN_MEAN_SUPPORT = 0.7, 0.8
"""Share of each side of a frame with four sides on lines that is edge, and of all of them on average."""
EDGE_FRAME_SUPPORT = 0.8
"""Share of each side on a line that is edge, for a frame the image's edge closes (two or three sides on
lines: a picture pasted in a corner, or partly outside the image). Plain photos have such corners of
straight edges more often than whole rectangles, so each side must be stronger and end at its corners."""
EDGE_FRAME_AREA = 0.06
"""Share of the image such a frame covers at least."""
END_LENGTH = 0.15
"""How far beyond a corner (share of the side's length, 4 px at least) a side of such a frame is followed."""
END_GAP = 2
"""Pixels skipped just beyond the corner before that: the meeting side's own edge pixels (±1)."""
END_MARGIN = 0.25
"""How much less edge the line is there than along the side: a pasted picture's side stops at its corner,
a building's or a table's edge runs on."""
FRAME_AREA = (0.03, 0.9)
"""Share of the image a frame may cover."""
MIN_FRAME_SIDE = 0.1
"""A frame's width and height, as shares of the image's."""
MAX_SPLIT = 0.9
"""A line inside a frame supported this much from side to side crosses it (see `frame_boxes`)."""
GRID_WINDOW = 0.03
"""How far from i/n of the side a grid boundary may lie (gutters, rounding)."""
GRID_COVER = 0.4
"""Share of the whole side a boundary covers beyond the lines just off it (on its quieter side)."""
GRID_SHAPES = ((2, 2), (2, 3), (3, 2), (3, 3))
"""Rows and columns of the grids tried."""
PAIR_SHAPES = ((1, 2), (2, 1))
"""Two pictures side by side or one above the other, looked for only where no grid above is found."""
PAIR_COVER = 0.7
"""A pair's one boundary must cover this much of the side more than the lines beside it, a single line being
weaker evidence than a grid's: at GRID_COVER 49 of the 393 corpus photos were cut in two, at 0.7 seven."""


@dataclass(frozen=True)
class Regions:
    """Where pictures sit inside an image, in its pixels."""

    canvas: Box | None
    """The picture framed by a flat canvas (`content_box`)."""
    tilt: float | None
    """Degrees that set upright a picture turned on a flat fill (`tilt`)."""
    cells: list[Box]
    """A collage's cells, row by row (`grid_cells`)."""
    frames: list[Box]
    """Pictures framed by straight edges, best first (`frame_boxes`); not looked for in a collage (a
    pair's two cells are no collage here)."""
    screen: Quad | None = None
    """A picture on a screen photographed at an angle, or pasted turned (`screen_quad`); not looked for
    where a flat canvas or a collage of more than two cells explains the image."""

    def __bool__(self) -> bool:
        """Whether anything was found: only then is the finer picture decoded to cut it."""
        return bool(self.canvas or self.tilt is not None or self.cells or self.frames or self.screen)

    def scaled(self, across: float, down: float) -> Regions:
        """The same regions in the pixels of a copy of the image `across` times as wide, `down` times as tall."""

        def box(b: Box) -> Box:
            return (round(b[0] * across), round(b[1] * down), round(b[2] * across), round(b[3] * down))

        def point(p: tuple[float, float]) -> tuple[float, float]:
            return (p[0] * across, p[1] * down)

        q = self.screen
        screen = None if q is None else (point(q[0]), point(q[1]), point(q[2]), point(q[3]))
        return Regions(
            None if self.canvas is None else box(self.canvas),
            self.tilt,
            [box(cell) for cell in self.cells],
            [box(frame) for frame in self.frames],
            screen,
        )


def finder_picture(rgb: Image.Image) -> Image.Image:
    """The small colour copy the finders need (FRAME_WORK_SIDE on the long side at most): what
    `find_regions` takes when no smaller decode of the image is at hand."""
    colour = rgb if rgb.mode == "RGB" else rgb.convert("RGB")
    return _small_copy(colour, rgb.size, min(1.0, FRAME_WORK_SIDE / max(rgb.size)))


def find_regions(picture: Image.Image, size: tuple[int, int] | None = None) -> Regions:
    """Every kind of region at once, from one small copy and one pair of edge maps. `picture` is the
    image or a smaller copy of it (`finder_picture`, or a decode at a reduced scale) at least
    FRAME_WORK_SIDE on its long side where the image is; boxes are in the pixels of the image, whose
    `size` is `picture`'s by default."""
    size = size or picture.size
    gray = picture.convert("L")
    edges = _Edges.of(picture, size)
    if edges is None:
        return Regions(None, None, [], [])
    small, scale = work_gray(gray, size)
    canvas, turned = _content_box(small, scale, size), _tilt(small)
    cells = edges.grid_cells()
    grid = len(cells) > 2  # a pair may be a photo cut at a line across its middle: it hides nothing
    screen = None if canvas is not None or grid else screen_quad(gray, size)
    return Regions(canvas, turned, cells, [] if grid else edges.frame_boxes(), screen)


def straightened(rgb: Image.Image, angle: float) -> Image.Image:
    """The picture turned by `angle` on a fill (see `tilt`) set upright and cut out of its fill."""
    fill = rgb.getpixel((0, 0))
    upright = rgb.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    box = content_box(upright)
    return upright if box is None else upright.crop(box)


TURNED_FILL_STEP = 24
"""Levels (in any channel) a pixel must lie from the fill to belong to the picture turned on it."""


def turned_box(rgb: Image.Image) -> Box:
    """The upright box around a picture turned on a flat fill (see `tilt`): what is not the fill's colour,
    `straightened`'s fill. `content_box` finds only an upright picture on a canvas."""
    pixels = np.asarray(rgb, dtype=np.int16)
    inside = np.abs(pixels - pixels[0, 0]).max(axis=2) > TURNED_FILL_STEP
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return (0, 0, rgb.width, rgb.height)
    return (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)


def frame_boxes(rgb: Image.Image) -> list[Box]:
    """Rectangles framed by straight edges (pictures inside a screenshot, a post, a photo they were
    pasted on), in the image's pixels, best supported and largest first, those no line crosses before
    those a line crosses (two pictures side by side, or one with a horizon; each hides only its own
    kind); empty when none."""
    edges = _Edges.of(rgb)
    return [] if edges is None else edges.frame_boxes()


def grid_cells(rgb: Image.Image) -> list[Box]:
    """The cells of a collage (2 or 3 rows by 2 or 3 columns of pictures, or a pair side by side or
    stacked), row by row, in the image's pixels; empty when the image is not one."""
    edges = _Edges.of(rgb)
    return [] if edges is None else edges.grid_cells()


@dataclass(frozen=True)
class _Edges:
    """Step edges of the FRAME_WORK_SIDE copy: `rows[y, x]` between rows y-1 and y, `cols[x, y]`
    between columns x-1 and x (gaps bridged)."""

    rows: np.ndarray
    cols: np.ndarray
    scale: float
    size: tuple[int, int]

    @classmethod
    def of(cls, image: Image.Image, size: tuple[int, int] | None = None) -> _Edges | None:
        """The edges of an image of `size` (default: `image`'s), from `image` (it or a smaller copy); of an
        RGB `image`, the edges between colours of one grey too."""
        width, height = size or image.size
        if min(width, height) < MIN_SIDE:
            return None
        gray, scale = _gray_copy(image, (width, height), FRAME_WORK_SIDE, np.uint8)
        rows, cols = _step_edges(gray, EDGE_BAND, EDGE_STEP), _step_edges(gray.T, EDGE_BAND, EDGE_STEP)
        if image.mode == "RGB":
            for channel in _opponents(np.asarray(_small_copy(image, (width, height), scale))):
                rows |= _step_edges(channel, EDGE_BAND, EDGE_STEP)
                cols |= _step_edges(channel.T, EDGE_BAND, EDGE_STEP)
        return cls(_bridge(rows), _bridge(cols), scale, (width, height))

    def frame_boxes(self) -> list[Box]:
        rows, cols = self.rows, self.cols
        h, w = cols.shape[1], rows.shape[1]
        across, down = _line_positions(rows, MIN_LINE_RUN * w), _line_positions(cols, MIN_LINE_RUN * h)
        if not across or not down:
            return []  # a frame needs a side on a line each way
        ys, xs = np.array([0, *across, h]), np.array([0, *down, w])
        horizontal = _supports(rows, ys, xs)  # [line, left, right]
        vertical = _supports(cols, xs, ys)  # [line, top, bottom]
        ny, nx = len(ys), len(xs)
        # The pairs of lines far enough apart each way; of the rectangles of a pair each way, those whose four
        # sides are supported enough (a cheap boolean test over all of them), the rest for those only.
        tops, bottoms = np.nonzero(ys[None, :] - ys[:, None] >= MIN_FRAME_SIDE * h)
        lefts, rights = np.nonzero(xs[None, :] - xs[:, None] >= MIN_FRAME_SIDE * w)
        h_ok = (horizontal >= MIN_SIDE_SUPPORT)[:, lefts, rights]  # [line, column pair]
        v_ok = (vertical >= MIN_SIDE_SUPPORT)[:, tops, bottoms]  # [line, row pair]
        row_pair, column_pair = np.nonzero(h_ok[tops] & h_ok[bottoms] & (v_ok[lefts] & v_ok[rights]).T)
        top, bottom, left, right = tops[row_pair], bottoms[row_pair], lefts[column_pair], rights[column_pair]
        area = (ys[bottom] - ys[top]) * (xs[right] - xs[left]) / float(h * w)
        framed = np.stack([top > 0, bottom < ny - 1, left > 0, right < nx - 1])  # [side]: on a line
        cornered = (framed[0] | framed[1]) & (framed[2] | framed[3])  # a side on a line each way
        keep = cornered & (area >= FRAME_AREA[0]) & (area <= FRAME_AREA[1])
        top, bottom, left, right, area = top[keep], bottom[keep], left[keep], right[keep], area[keep]
        framed = framed[:, keep]
        sides = np.stack(
            [
                horizontal[top, left, right],
                horizontal[bottom, left, right],
                vertical[left, top, bottom],
                vertical[right, top, bottom],
            ]
        )
        closed = framed.all(axis=0)
        # The border's sides count 1: the weakest of an edge frame's sides is one on a line
        good = np.where(
            closed,
            sides.mean(axis=0) >= MIN_MEAN_SUPPORT,
            (sides.min(axis=0) >= EDGE_FRAME_SUPPORT) & (area >= EDGE_FRAME_AREA),
        )
        edged = np.flatnonzero(good & ~closed)
        good[edged] = _sides_end(
            (_running(rows, ys), _running(cols, xs)),
            (ys, xs),
            (top[edged], bottom[edged], left[edged], right[edged]),
            framed[:, edged],
            sides[:, edged],
        )
        found = np.flatnonzero(good)
        if found.size == 0:
            return []
        top, bottom, left, right = top[found], bottom[found], left[found], right[found]
        split = np.maximum(
            _strongest_between(horizontal, top, bottom, left, right),
            _strongest_between(vertical, left, right, top, bottom),
        )
        support: np.ndarray = np.round(sides.min(axis=0)[found], 1)
        crossed = split >= MAX_SPLIT
        order = np.lexsort((-area[found], -support, crossed))
        kept: list[tuple[Box, bool]] = []
        for i, is_crossed in zip(order, crossed[order], strict=True):
            box = (int(xs[left[i]]), int(ys[top[i]]), int(xs[right[i]]), int(ys[bottom[i]]))
            if all(overlap(box, other) < 0.5 for other, other_crossed in kept if other_crossed == is_crossed):
                kept.append((box, bool(is_crossed)))
        return [_to_image(box, self.scale, self.size) for box, _ in kept]

    def grid_cells(self) -> list[Box]:
        h, w = self.cols.shape[1], self.rows.shape[1]
        row_cover, col_cover = self.rows.mean(axis=1), self.cols.mean(axis=1)
        best: tuple[float, list[tuple[int, int]], list[tuple[int, int]]] | None = None
        for count_down, columns in GRID_SHAPES + PAIR_SHAPES:
            is_pair = count_down * columns == 2
            if is_pair and best is not None:
                break  # a grid with more boundaries found is never cut in two instead
            across = [_grid_boundary(row_cover, round(h * i / count_down)) for i in range(1, count_down)]
            down = [_grid_boundary(col_cover, round(w * i / columns)) for i in range(1, columns)]
            weakest = min(strength for strength, _ in across + down)
            if weakest >= (PAIR_COVER if is_pair else GRID_COVER) and (best is None or weakest > best[0]):
                best = (weakest, [span for _, span in across], [span for _, span in down])
        if best is None:
            return []
        ys = [(0, 0), *best[1], (h, h)]
        xs = [(0, 0), *best[2], (w, w)]
        return [
            _to_image((xs[j][1], ys[i][1], xs[j + 1][0], ys[i + 1][0]), self.scale, self.size)
            for i in range(len(ys) - 1)
            for j in range(len(xs) - 1)
        ]


def _opponents(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The red-green and yellow-blue opponent channels of an RGB array, as whole grey levels around 128
    (half and a quarter of the differences): a picture pasted on another often meets it in colour
    where their greys match."""
    red, green, blue = (rgb[..., i].astype(np.int16) for i in range(3))
    red_green = (red - green) // 2 + 128
    yellow_blue = (red + green - 2 * blue) // 4 + 128
    return red_green.astype(np.uint8), yellow_blue.astype(np.uint8)


def _step_edges(g: np.ndarray, band: int, step: float) -> np.ndarray:
    """[y, x]: a step edge between rows y-1 and y (the sums of `band` rows on each side differ by
    more than `step` times `band`, at the row where that difference peaks), ±1 row; shape (rows + 1,
    columns). Rows nearer the border than `band` have none: there the border itself frames. `g` holds
    whole grey levels, so the sums are exact: each row's band is summed from shifted copies, which costs
    less than a running sum down the rows."""
    n, m = g.shape
    edges = np.zeros((n + 1, m), dtype=bool)
    if n < 2 * band:
        return edges
    levels = g.astype(np.int16)  # exact for bands of up to 128 rows (EDGE_BAND is 3)
    bands = levels[: n - band + 1].copy()  # bands[k]: rows k .. k+band-1
    for shift in range(1, band):
        bands += levels[shift : n - band + 1 + shift]
    difference = np.abs(bands[band:] - bands[:-band])
    peak = difference > step * band
    peak[1:] &= difference[1:] >= difference[:-1]
    peak[:-1] &= difference[:-1] >= difference[1:]
    edges[band : n - band + 1] = peak
    near = edges.copy()
    near[1:] |= edges[:-1]
    near[:-1] |= edges[1:]
    return near


def _bridge(rows: np.ndarray, gap: int = EDGE_GAP) -> np.ndarray:
    """Rows with gaps of up to `gap` pixels between edge pixels filled."""
    bridged = rows.copy()
    for k in range(1, gap + 1):
        bridged[:, k:-k] |= rows[:, : -2 * k] & rows[:, 2 * k :]
    return bridged


def _line_positions(rows: np.ndarray, min_run: float) -> list[int]:
    """The MAX_LINES rows with the longest runs of edge (at least `min_run`), 3 rows apart at least."""
    runs = np.zeros(rows.shape[0], dtype=np.int32)
    candidates = np.flatnonzero(np.count_nonzero(rows, axis=1) >= min_run)  # a run needs that many edge pixels
    candidates = candidates[(candidates > 0) & (candidates < rows.shape[0] - 1)]
    if candidates.size:
        # Each candidate row (it has edge pixels) padded with a gap at both ends, all laid end to end: a run
        # starts where a gap turns to edge and ends where it turns back.
        padded = np.zeros((candidates.size, rows.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = rows[candidates]
        turns = np.diff(padded.ravel())
        starts, ends = np.flatnonzero(turns == 1), np.flatnonzero(turns == -1)
        first = np.searchsorted(starts, np.arange(candidates.size) * padded.shape[1])
        runs[candidates] = np.maximum.reduceat(ends - starts, first)
    kept: list[int] = []
    near_kept = np.zeros(rows.shape[0], dtype=bool)  # within 2 rows of a kept one
    order = np.argsort(-runs, kind="stable")[: 4 * MAX_LINES]
    for y, run in zip(order.tolist(), runs[order].tolist(), strict=True):
        if run < min_run or len(kept) == MAX_LINES:
            break
        if not near_kept[y]:
            kept.append(y)
            near_kept[max(0, y - 2) : y + 3] = True
    return sorted(kept)


def _supports(rows: np.ndarray, lines: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """[i, a, b]: share of line `lines[i]` of the edge map `rows` that is edge between `ends[a]` and
    `ends[b]`; 0 where it does not stand out from the lines beside it on either side; 1 on the image's
    border. Only the rows looked at are summed."""
    span = np.maximum((ends[None, :] - ends[:, None]).astype(np.float32), 1.0)[None]
    offsets = np.array([0, *(-k for k in LINE_OFFSETS), *LINE_OFFSETS])
    positions = np.clip(lines[None, :] + offsets[:, None], 0, rows.shape[0] - 1)
    along = np.zeros((*positions.shape, rows.shape[1] + 1), dtype=np.int32)
    np.cumsum(rows[positions], axis=2, out=along[..., 1:])
    covered = along[..., ends]  # [offset, line, end]
    shares = (covered[:, :, None, :] - covered[:, :, :, None]) / span[None]
    count = len(LINE_OFFSETS)
    support, before, after = shares[0], shares[1 : 1 + count].mean(axis=0), shares[1 + count :].mean(axis=0)
    support = np.where(support - np.minimum(before, after) >= LINE_PROMINENCE, support, 0.0)
    support[[0, -1]] = 1.0
    return support


def _running(rows: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """[i, x]: edge pixels of row `lines[i]` of the edge map `rows` before x."""
    running = np.zeros((len(lines), rows.shape[1] + 1), dtype=np.int32)
    np.cumsum(rows[lines], axis=1, out=running[:, 1:])
    return running


def _sides_end(
    running: tuple[np.ndarray, np.ndarray],
    lines: tuple[np.ndarray, np.ndarray],
    frames: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    framed: np.ndarray,
    sides: np.ndarray,
) -> np.ndarray:
    """Whether each frame's corners where two of its sides on lines meet are corners: beyond such a corner,
    for END_LENGTH of the side, one of the two lines at least is END_MARGIN less edge than along its side
    (taken as so where the image ends first). One, not both: the photo beyond a pasted picture's corner is
    often busy enough to line up with one of its sides (paste_at_edge, seed 7: 95 → 121 of 200 framed among
    the two best boxes; plain photos with a frame 98 → 109 of 393), while two lines that cross run on past
    each other. Frames as indices (top, bottom, left, right) into the `lines` across and down, whose
    `running` sums (`_running`) are given; `framed` and `sides` as in `frame_boxes`."""
    ys, xs = lines
    top, bottom, left, right = frames
    stops = []  # per side: whether its line stops beyond its first end, and beyond its last
    for k, (table, line, start, stop) in enumerate(
        (
            (running[0], top, xs[left], xs[right]),
            (running[0], bottom, xs[left], xs[right]),
            (running[1], left, ys[top], ys[bottom]),
            (running[1], right, ys[top], ys[bottom]),
        )
    ):
        reach = np.maximum(4, np.round(END_LENGTH * (stop - start))).astype(np.int64)
        most = sides[k] - END_MARGIN
        stops.append(
            (
                _share_between(table, line, start - END_GAP - reach, start - END_GAP) <= most,
                _share_between(table, line, stop + END_GAP, stop + END_GAP + reach) <= most,
            )
        )
    (top_left, top_right), (bottom_left, bottom_right), (left_top, left_bottom), (right_top, right_bottom) = stops
    ends = np.ones(top.shape, dtype=bool)
    for first, second, stopped in (
        (0, 2, top_left | left_top),
        (0, 3, top_right | right_top),
        (1, 3, bottom_right | right_bottom),
        (1, 2, bottom_left | left_bottom),
    ):
        ends &= ~(framed[first] & framed[second]) | stopped
    return ends


def _share_between(running: np.ndarray, line: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Share of edge on lines `line` between `start` and `stop` (clipped to the image); 0 where under 3 px remain."""
    start, stop = np.clip(start, 0, running.shape[1] - 1), np.clip(stop, 0, running.shape[1] - 1)
    span = stop - start
    share = (running[line, stop] - running[line, start]) / np.maximum(span, 1)
    return np.where(span >= 3, share, 0.0)


def _strongest_between(
    supports: np.ndarray, first: np.ndarray, last: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Per frame: the best support between `a` and `b` of the lines strictly between `first` and `last`
    (0 where none lie between), in float32: the precision MAX_SPLIT was chosen at."""
    lines = np.arange(supports.shape[0])[:, None]
    between = (lines > first) & (lines < last)
    strongest: np.ndarray = np.where(between, supports[:, a, b], 0.0).max(axis=0).astype(np.float32)
    return strongest


def _grid_boundary(cover: np.ndarray, expected: int) -> tuple[float, tuple[int, int]]:
    """How well a grid boundary near `expected` stands out (its best cover minus the cover a few lines
    off its quieter side), and the lines it spans (a gutter's two edges)."""
    n = len(cover)
    half = max(2, round(GRID_WINDOW * n))
    low, high = max(1, expected - half), min(n - 1, expected + half + 1)
    window = cover[low:high]
    if window.size == 0:
        return 0.0, (expected, expected)
    strong = np.flatnonzero(window >= GRID_COVER)
    first, last = (low + int(strong[0]), low + int(strong[-1])) if strong.size else (expected, expected)
    beside = [cover[max(0, first - 8) : max(0, first - 3)], cover[last + 4 : last + 9]]
    quieter = min((float(part.mean()) for part in beside if part.size), default=0.0)
    return float(window.max()) - quieter, (first, last)


def overlap(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _to_image(box: Box, scale: float, size: tuple[int, int]) -> Box:
    """A box on the grey copy in the image's pixels."""
    left, top, right, bottom = box
    width, height = size
    return (
        max(0, round(left / scale)),
        max(0, round(top / scale)),
        min(width, round(right / scale)),
        min(height, round(bottom / scale)),
    )


# A screen photographed at an angle: a dark bezel around a four-sided picture ---------------------
#
# A photo of a monitor or a phone shows the picture as a quadrilateral (perspective), framed by the
# screen's dark bezel and set in a room or on a desk: no flat canvas, no axis-aligned edges. On the
# grey copy the frames are looked for on, lightly smoothed (moiré):
#
# 1. Lines: a Hough transform of the pixels whose gradient exceeds QUAD_EDGE, each voting near its
#    own gradient direction; peaks with QUAD_MIN_VOTES of the short side, at most QUAD_LINES per
#    family, near-horizontal and near-vertical (QUAD_MAX_TILT from the axes).
# 2. Quadrilaterals: two lines of each family, opposite sides QUAD_MIN_SIDE of the image apart, one
#    side turned QUAD_MIN_TILT at least, corners no further than QUAD_OUTSIDE outside the image; each
#    side at least half inside the image, and QUAD_SUPPORT of that part on edge pixels. A side is the
#    picture's own edge, with the bezel just outside it, or, where the picture is as dark at its border
#    as the bezel (a model on black), the screen's outline, with the bezel just inside: the bezel is on
#    the darker hand, sampled BEZEL_OFFSET away, darker than BEZEL_LEVEL on average (and on each side
#    than BEZEL_SIDE_LEVEL along the picture's edge, BEZEL_LEVEL along an outline), BEZEL_CONTRAST
#    darker than the other hand, and smooth (BEZEL_ROUGHNESS). One side may be the image's own edge
#    instead, where the photo cuts the screen off: then the other three carry the tests, unloosened,
#    with the bezel darker than CUT_OFF_BEZEL_LEVEL on average.
#    A picture pasted turned onto a photo (a print laid on a table) has no bezel: a quadrilateral with
#    four sides of its own passes too where it is a true rectangle, opposite sides parallel and corners
#    square within PASTED_ANGLE, each side PASTED_SUPPORT on edge pixels, PASTED_INSIDE inside the
#    image, and stopping at one of its corners at least (for END_LENGTH beyond it, PASTED_END_MARGIN less
#    edge): the photo beyond the other may be busy.
# 3. The one with four sides of its own, then most sides on the picture's own edge, then the best
#    supported, then the largest, is warped square into a view of its own (`rectified`).
# Each line's figures are cumulative sums along it, so every quadrilateral is judged at once.

_COS, _SIN = np.cos(np.radians(np.arange(180))), np.sin(np.radians(np.arange(180)))

QUAD_SMOOTHING = 1.0
"""Gaussian sigma (grey-copy pixels) against moiré and noise before gradients are taken."""
QUAD_EDGE = 60.0
"""Sobel gradient magnitude of an edge pixel (a step of about 15 grey levels)."""
QUAD_ANGLE_SPREAD = 2
"""Degrees on each side of a pixel's own gradient direction it votes for."""
_SPREAD = np.arange(2 * QUAD_ANGLE_SPREAD + 1)
_WRAPPED = np.arange(-QUAD_ANGLE_SPREAD, 180 + QUAD_ANGLE_SPREAD) % 180
"""The θ a pixel of gradient direction d (0-179°) votes for: `_WRAPPED[d + _SPREAD]` (d ± spread, mod 180)."""
QUAD_MIN_VOTES = 0.12
"""Votes a line needs, as a share of the image's short side."""
QUAD_LINES = 12
"""Lines kept per family (near-horizontal, near-vertical), most voted first."""
QUAD_MAX_TILT = 30
"""Degrees a side may turn away from the axis it follows."""
_ACROSS = np.abs(np.arange(180) - 90) <= QUAD_MAX_TILT
_DOWN = np.minimum(np.arange(180), 180 - np.arange(180)) <= QUAD_MAX_TILT
"""The θ (degrees) of near-horizontal lines, and of near-vertical ones."""
QUAD_MIN_TILT = 3.0
"""Degrees at least one side turns from its axis: an upright rectangle is a frame's business (`frame_boxes`)."""
QUAD_MIN_SIDE = 0.2
"""Opposite sides at least this share of the image apart (at its middle)."""
QUAD_OUTSIDE = 0.15
"""How far outside the image (share of its side) a corner may lie: a screen cut by the photo's edge."""
QUAD_SUPPORT = 0.7
"""Share of a side's samples (inside the image) that must be on edge pixels."""
BEZEL_OFFSET = 2
"""Pixels outside (and inside) a side where the bezel (and the picture) is sampled, past the blur."""
BEZEL_LEVEL = 90.0
"""Mean grey of the bezel along the sides at most: a screen's bezel is dark, even under glare."""
BEZEL_CONTRAST = 15.0
"""How much darker the bezel's hand of the sides is than the other, on average."""
BEZEL_ROUGHNESS = 4.0
"""Mean grey step between neighbouring points of the bezel along a side at most: a bezel is smooth, a
chessboard's squares or a building's windows are not."""
CUT_OFF_BEZEL_LEVEL = 60.0
"""Mean grey of the bezel along the three sides of a screen the photo cuts off, at most: judged on one side
fewer, it must be darker (seed 1: 35 of the 42 such screens found, 6 of the 17 plain photos' such shapes)."""
BEZEL_SIDE_LEVEL = 120.0
"""Mean grey just outside each of the picture's own edges at most (an outline's bezel keeps to
BEZEL_LEVEL: a dark-bordered picture framed by anything a little darker around it is no screen)."""
PASTED_SUPPORT = 0.8
"""Share of each side that is edge, for a picture pasted turned onto a photo (no bezel around it)."""
PASTED_ANGLE = 2.0
"""Degrees its opposite sides may be off parallel and its corners off square: a picture turned, not seen in
perspective (a shape in a photo seen at an angle is seldom square that closely)."""
PASTED_INSIDE = 0.9
"""Share of its sides inside the image at least."""
PASTED_END_MARGIN = 0.1
"""How much less edge each side's line is beyond its corners (for END_LENGTH) than along the side. Less than
frames ask (END_MARGIN): these edge pixels are gradients, which texture beyond a corner also has."""
SCREEN_GATE_SIDE = 200
"""Long side of the coarse copy the whole finder first runs on (`screen_gate`): 0.4 of the pixels."""
SCREEN_GATE_SLACK = 2.5
"""How much the coarse look loosens the bezel and support tests: it kept 258 of the 264 screens the
full finder found among the corpus photos shown on a screen (seed 1), and sent 87 of 393 plain
photos on to it."""


def screen_quad(picture: Image.Image, size: tuple[int, int] | None = None) -> Quad | None:
    """The corners of a picture shown on a screen photographed at an angle, or pasted turned (see above),
    in the pixels of the image of `size` (default: `picture`'s) that `picture` is a copy of; else None."""
    width, height = size or picture.size
    if min(width, height) < MIN_SIDE:
        return None
    if not screen_gate(picture, (width, height)):
        return None
    gray, scale = _gray_copy(picture, (width, height), FRAME_WORK_SIDE, np.float32)
    found = _screen_quad(ndimage.gaussian_filter(gray, QUAD_SMOOTHING))
    if found is None:
        return None
    corners = found / scale
    return tuple((float(x), float(y)) for x, y in corners)  # type: ignore[return-value]


def screen_gate(picture: Image.Image, size: tuple[int, int] | None = None) -> bool:
    """Whether a screen may be there: the finder, loosened, on a coarse copy finds a quadrilateral.
    Most plain photos stop here, at a bit over half the full finder's cost (about 3.5 against 6 ms)."""
    coarse, _ = _gray_copy(picture, size or picture.size, SCREEN_GATE_SIDE, np.float32)
    return _screen_quad(ndimage.gaussian_filter(coarse, QUAD_SMOOTHING), SCREEN_GATE_SLACK) is not None


def _screen_quad(g: np.ndarray, slack: float = 1.0) -> np.ndarray | None:
    """The 4×2 corners (x, y) on the grey copy, or None; `slack` above 1 loosens the bezel and
    support tests of quadrilaterals with four sides of their own (the coarse look of `screen_gate`)."""
    h, w = g.shape
    gx, gy = _sobel(g)
    edge = _steep(gx, gy, QUAD_EDGE)
    ys, xs = np.nonzero(edge)
    if ys.size < 4:
        return None
    direction = np.round(np.degrees(np.arctan2(gy[edge], gx[edge]))).astype(np.int64) % 180
    off_axis = np.minimum(np.abs(direction - 90), np.minimum(direction, 180 - direction))
    useful = off_axis <= QUAD_MAX_TILT + QUAD_ANGLE_SPREAD  # diagonal edges belong to no side
    ys, xs, direction = ys[useful], xs[useful], direction[useful]
    diagonal = int(np.ceil(np.hypot(h, w)))
    thetas = _WRAPPED[direction[:, None] + _SPREAD[None, :]]
    rhos = np.round(xs[:, None] * _COS[thetas] + ys[:, None] * _SIN[thetas]).astype(np.int64) + diagonal
    cells = np.bincount((thetas * (2 * diagonal + 1) + rhos).ravel(), minlength=180 * (2 * diagonal + 1))
    votes, least = cells.reshape(180, 2 * diagonal + 1), QUAD_MIN_VOTES * min(h, w)
    strong = np.count_nonzero(votes >= least, axis=1)  # cells a line may come from, per θ
    if not _three_sides(strong[_ACROSS].sum(), strong[_DOWN].sum()):
        return None  # too few lines, whatever the peaks
    theta, rho = _peaks(votes, least)
    rho = rho - diagonal
    tilt_from_horizontal = np.abs(theta - 90)
    tilt_from_vertical = np.minimum(theta, 180 - theta)
    across = _lines(theta, rho, tilt_from_horizontal <= QUAD_MAX_TILT, w / 2, horizontal=True)
    down = _lines(theta, rho, tilt_from_vertical <= QUAD_MAX_TILT, h / 2, horizontal=False)
    if not _three_sides(len(across), len(down)):
        return None
    # The image's edges, one of which may stand for the fourth side of a screen the photo cuts off
    across = [(np.pi / 2, 0.0, 0.0), *across, (np.pi / 2, float(h), float(h))]
    down = [(0.0, 0.0, 0.0), *down, (0.0, float(w), float(w))]
    corners = _crossings(across, down)  # [across, down, (x, y)]
    na, nd = len(across), len(down)
    top, bottom = _opposite(np.array([line[2] for line in across]), QUAD_MIN_SIDE * h)
    left, right = _opposite(np.array([line[2] for line in down]), QUAD_MIN_SIDE * w)
    pairs = len(left)
    top, bottom, left, right = (
        np.repeat(top, pairs),
        np.repeat(bottom, pairs),
        np.tile(left, len(top)),
        np.tile(right, len(top)),
    )
    across_angle, down_angle = np.degrees([line[0] for line in across]), np.degrees([line[0] for line in down])
    tilts = (np.abs(across_angle - 90), 90 - np.abs(down_angle - 90))  # from horizontal, from vertical
    turned = np.max([tilts[0][top], tilts[0][bottom], tilts[1][left], tilts[1][right]], axis=0)
    keep = turned >= QUAD_MIN_TILT
    border = np.array([top == 0, bottom == na - 1, left == 0, right == nd - 1])  # per side: the image's edge
    keep &= border.sum(axis=0) <= 1
    top, bottom, left, right, border = top[keep], bottom[keep], left[keep], right[keep], border[:, keep]
    quads = np.stack([corners[top, left], corners[top, right], corners[bottom, right], corners[bottom, left]], axis=1)
    reach = np.array([w, h], dtype=np.float64)
    keep = ((quads >= -QUAD_OUTSIDE * reach) & (quads <= (1 + QUAD_OUTSIDE) * reach)).all(axis=(1, 2))
    quads, border = quads[keep], border[:, keep]
    top, bottom, left, right = top[keep], bottom[keep], left[keep], right[keep]
    if quads.shape[0] == 0:
        return None
    horizontal = _Profiles.along(g, edge, across, horizontal=True)
    vertical = _Profiles.along(g, edge, down, horizontal=False)
    sides = [
        horizontal.side(top, quads[:, 0, 0], quads[:, 1, 0], outward=-1),
        horizontal.side(bottom, quads[:, 3, 0], quads[:, 2, 0], outward=1),
        vertical.side(left, quads[:, 0, 1], quads[:, 3, 1], outward=-1),
        vertical.side(right, quads[:, 1, 1], quads[:, 2, 1], outward=1),
    ]
    # A side on the image's edge is judged by nothing: the other three carry the tests
    real = ~border
    support = np.where(real, [side.support for side in sides], np.inf).min(axis=0)
    covered = np.where(real, [side.covered for side in sides], np.inf).min(axis=0)
    outside = np.array([side.outside_sum / np.maximum(side.outside_count, 1) for side in sides])
    inside = np.array([side.inside_sum / np.maximum(side.inside_count, 1) for side in sides])
    # The bezel lies on a side's darker hand: outside the picture's own edge, inside the screen's outline.
    own_edge = (outside <= inside) & real
    level = np.where(own_edge, outside, inside)
    contrast = np.abs(inside - outside)
    sides_judged, on_edge = real.sum(axis=0), border.any(axis=0)
    # With one side unjudged, a screen cut off must show a darker bezel, with no slack
    loosened = np.where(on_edge, 1.0, slack)
    darkest = np.where(on_edge, CUT_OFF_BEZEL_LEVEL, BEZEL_LEVEL)
    bezel = ((level * real).sum(axis=0) <= darkest * loosened * sides_judged) & (
        (contrast * real).sum(axis=0) >= BEZEL_CONTRAST / loosened * sides_judged
    )
    bezel &= ((level <= np.where(own_edge, BEZEL_SIDE_LEVEL, BEZEL_LEVEL) * loosened) | border).all(axis=0)
    roughness = np.where(
        own_edge,
        [side.outside_steps / np.maximum(side.outside_count, 1) for side in sides],
        [side.inside_steps / np.maximum(side.inside_count, 1) for side in sides],
    )
    bezel &= (roughness * real).max(axis=0) <= BEZEL_ROUGHNESS * loosened
    passed = (support >= QUAD_SUPPORT / loosened) & (covered >= 0.5) & bezel
    pasted = (
        ~on_edge
        & (support >= PASTED_SUPPORT / slack)
        & (covered >= PASTED_INSIDE)
        & (_turn(across_angle[top], across_angle[bottom]) <= PASTED_ANGLE)
        & (_turn(down_angle[left], down_angle[right]) <= PASTED_ANGLE)
        & (_turn(across_angle[top], down_angle[left] + 90) <= PASTED_ANGLE)
    )
    if slack == 1.0 and pasted.any():  # the gate's coarse look leaves the ends to the full finder
        corners = quads[pasted]
        ends = [
            horizontal.beyond(top[pasted], corners[:, 0, 0], corners[:, 1, 0]),
            horizontal.beyond(bottom[pasted], corners[:, 3, 0], corners[:, 2, 0]),
            vertical.beyond(left[pasted], corners[:, 0, 1], corners[:, 3, 1]),
            vertical.beyond(right[pasted], corners[:, 1, 1], corners[:, 2, 1]),
        ]
        own = np.array([side.support[pasted] for side in sides])
        pasted[pasted] = (np.array(ends) <= own - PASTED_END_MARGIN).all(axis=0)
    passed |= pasted
    if not passed.any():
        return None
    x, y = quads[:, :, 0], quads[:, :, 1]
    area = 0.5 * np.abs((x * np.roll(y, -1, axis=1) - y * np.roll(x, -1, axis=1)).sum(axis=1))
    chosen = np.flatnonzero(passed)
    own_edges = own_edge.sum(axis=0)
    best = chosen[np.lexsort((-area[chosen], -np.round(support[chosen], 1), -own_edges[chosen], on_edge[chosen]))[0]]
    found: np.ndarray = quads[best]
    return found


def _opposite(positions: np.ndarray, least: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second) of the pairs of lines at least `least` apart, the second further on, in
    lexicographic order; never the first and the last (the image's two edges) together."""
    first, second = np.nonzero(positions[None, :] - positions[:, None] >= least)
    keep = (first > 0) | (second < len(positions) - 1)
    return first[keep], second[keep]


def _turn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Degrees between lines whose normals point `a` and `b` degrees (lines have no sense: mod 180)."""
    apart = np.abs(a - b) % 180
    turn: np.ndarray = np.minimum(apart, 180 - apart)
    return turn


def _three_sides(across: int, down: int) -> bool:
    """Whether that many near-horizontal and near-vertical lines make three sides of a quadrilateral."""
    return min(across, down) >= 1 and across + down >= 3


def _sobel(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`ndimage.sobel(g, 1)` and `ndimage.sobel(g, 0)` of a float32 image in fewer passes: the derivative
    rounded to float32 as there, the smoothing summed in float64 and rounded once, the border mirrored (the
    same arrays, bit for bit, on the 2984 grey copies of corpus photos and composites checked)."""
    padded = np.pad(g, 1, mode="symmetric")  # ndimage's "reflect"
    dx, dy = padded[:, 2:] - padded[:, :-2], padded[2:] - padded[:-2]
    gx = (dx[:-2].astype(np.float64) + dx[2:] + 2.0 * dx[1:-1]).astype(np.float32)
    gy = (dy[:, :-2].astype(np.float64) + dy[:, 2:] + 2.0 * dy[:, 1:-1]).astype(np.float32)
    return gx, gy


def _steep(gx: np.ndarray, gy: np.ndarray, least: float) -> np.ndarray:
    """Where `np.hypot(gx, gy) > least`, from the squares (float32 rounds them by far less than 1e-4), with
    hypot itself only for the few pixels that close to `least`."""
    squares = gx * gx + gy * gy
    steep: np.ndarray = squares > least * least * (1 + 1e-4)
    close = np.flatnonzero((squares >= least * least * (1 - 1e-4)) & ~steep)
    steep.flat[close] = np.hypot(gx.flat[close], gy.flat[close]) > least
    return steep


def _peaks(votes: np.ndarray, least: float) -> tuple[np.ndarray, np.ndarray]:
    """(θ, ρ index) of the best-voted cells with at least `least` votes, most voted first, none within
    4° and 2 ρ of a better one (the inner and outer edges of a thin bezel stay two lines)."""
    flat = votes.ravel()
    best = np.flatnonzero(flat >= least)  # a few hundred of some 10⁵ cells: cheaper than partitioning them all
    best = best[np.argsort(-flat[best], kind="stable")[: 40 * QUAD_LINES]]  # ties: lower θ, then lower ρ first
    thetas, rhos = np.divmod(best, votes.shape[1])
    blocked = np.zeros((180 + 8, votes.shape[1] + 4), dtype=bool)  # θ and ρ shifted by 4 and 2, θ wrapping
    kept: list[int] = []
    for i, (theta, rho) in enumerate(zip(thetas.tolist(), rhos.tolist(), strict=True)):
        if blocked[theta + 4, rho + 2]:
            continue
        kept.append(i)
        if len(kept) == 4 * QUAD_LINES:
            break
        for turn in (theta - 180, theta, theta + 180):  # the window wraps around 0° / 180°
            if -4 <= turn + 4 and turn - 4 < 180:
                blocked[max(0, turn) : turn + 9, rho : rho + 5] = True
    return thetas[kept], rhos[kept].astype(np.float64)


def _lines(
    theta: np.ndarray, rho: np.ndarray, chosen: np.ndarray, middle: float, horizontal: bool
) -> list[tuple[float, float, float]]:
    """Up to QUAD_LINES lines x cos θ + y sin θ = ρ as (θ in radians, ρ, where the line crosses the
    image's middle column or row), ordered by that position."""
    kept: list[tuple[float, float, float]] = []
    for t, r in zip(theta[chosen][:QUAD_LINES], rho[chosen][:QUAD_LINES], strict=True):
        angle = float(np.radians(t))
        cos, sin = np.cos(angle), np.sin(angle)
        position = (r - middle * cos) / sin if horizontal else (r - middle * sin) / cos
        kept.append((angle, float(r), float(position)))
    return sorted(kept, key=lambda line: line[2])


def _crossings(across: list[tuple[float, float, float]], down: list[tuple[float, float, float]]) -> np.ndarray:
    """[i, j]: (x, y) where line `across[i]` crosses line `down[j]` (lines as (θ, ρ, ...))."""
    a = np.array([line[:2] for line in across])[:, None, :]
    d = np.array([line[:2] for line in down])[None, :, :]
    cos_a, sin_a, cos_d, sin_d = np.cos(a[..., 0]), np.sin(a[..., 0]), np.cos(d[..., 0]), np.sin(d[..., 0])
    determinant = cos_a * sin_d - sin_a * cos_d  # sides at most 2 × QUAD_MAX_TILT off square: never 0
    x = (a[..., 1] * sin_d - d[..., 1] * sin_a) / determinant
    y = (cos_a * d[..., 1] - cos_d * a[..., 1]) / determinant
    return np.stack([x, y], axis=-1)


@dataclass(frozen=True)
class _Side:
    """One side of many quadrilaterals at once: its edge support, how much of it lies inside the image,
    and the grey levels summed (and counted) just outside and just inside it."""

    support: np.ndarray
    covered: np.ndarray
    outside_sum: np.ndarray
    outside_count: np.ndarray
    inside_sum: np.ndarray
    inside_count: np.ndarray
    outside_steps: np.ndarray
    """Summed absolute differences between neighbouring samples just outside: a bezel is smooth."""
    inside_steps: np.ndarray
    """The same just inside, where the bezel lies when the side is the screen's outline."""


@dataclass(frozen=True)
class _Profiles:
    """Cumulative sums along each line of one family, one step per column (near-horizontal lines) or
    row (near-vertical): edge hits, points inside the image, grey levels BEZEL_OFFSET before and after
    the line (and how many were inside), so a segment's figures cost O(1)."""

    hits: np.ndarray
    within: np.ndarray
    before: np.ndarray
    before_count: np.ndarray
    after: np.ndarray
    after_count: np.ndarray
    before_steps: np.ndarray
    after_steps: np.ndarray

    @classmethod
    def along(
        cls, g: np.ndarray, edge: np.ndarray, lines: list[tuple[float, float, float]], horizontal: bool
    ) -> _Profiles:
        if not horizontal:
            g, edge = g.T, edge.T
        h, w = g.shape
        steps = np.arange(w, dtype=np.float64)
        angle = np.array([line[0] for line in lines])[:, None]
        rho = np.array([line[1] for line in lines])[:, None]
        cos, sin = np.cos(angle), np.sin(angle)
        # x cos + y sin = ρ; on the transposed copy the roles of x and y swap
        across = (rho - steps * cos) / sin if horizontal else (rho - steps * sin) / cos
        position = np.round(across).astype(np.int64)
        inside = (position >= 1) & (position < h - 1)
        rows = np.clip(position, 1, h - 2)
        near = (
            edge[rows, steps.astype(np.int64)]
            | edge[rows - 1, steps.astype(np.int64)]
            | edge[rows + 1, steps.astype(np.int64)]
        )

        def sampled(offset: int) -> tuple[np.ndarray, np.ndarray]:
            at = position + offset
            valid = (at >= 0) & (at < h)
            levels = np.where(valid, g[np.clip(at, 0, h - 1), steps.astype(np.int64)], 0.0)
            return levels, valid

        before, before_valid = sampled(-BEZEL_OFFSET)
        after, after_valid = sampled(BEZEL_OFFSET)

        def steps_of(levels: np.ndarray, valid: np.ndarray) -> np.ndarray:
            jumps = np.zeros(levels.shape, dtype=np.float64)
            jumps[:, 1:] = np.abs(np.diff(levels, axis=1)) * (valid[:, 1:] & valid[:, :-1])
            return jumps

        def running(values: np.ndarray) -> np.ndarray:
            total = np.zeros((values.shape[0], values.shape[1] + 1), dtype=np.float64)
            np.cumsum(values, axis=1, out=total[:, 1:])
            return total

        return cls(
            running(near & inside),
            running(inside),
            running(before),
            running(before_valid),
            running(after),
            running(after_valid),
            running(steps_of(before, before_valid)),
            running(steps_of(after, after_valid)),
        )

    def beyond(self, line: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The less edge of lines `line` has just before `start` and just after `end` (END_LENGTH of the
        segment between them, 4 steps at least, past END_GAP); 0 outside the image. The less: a pasted
        picture's side stops at both corners, but the photo beyond one of them may be busy enough to line
        up with it (paste_turned, seed 7: 59 → 82 of 200 found; plain photos with a quadrilateral 18 → 19
        of 393), while a longer line the quadrilateral merely cuts runs on past both."""
        reach = np.maximum(4.0, END_LENGTH * np.abs(end - start))
        first, last = np.minimum(start, end), np.maximum(start, end)
        before = self._support(line, first - END_GAP - reach, first - END_GAP)
        after = self._support(line, last + END_GAP, last + END_GAP + reach)
        least: np.ndarray = np.minimum(before, after)
        return least

    def _support(self, line: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Share of edge of lines `line` between `start` and `end` (clipped to the image; 0 under 3 steps)."""
        first, last = self._span(start, end)
        hits = self.hits[line, last] - self.hits[line, first]
        within = self.within[line, last] - self.within[line, first]
        return np.where(within >= 3, hits / np.maximum(within, 1.0), 0.0)

    def _span(self, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The steps (first, last) between positions `start` and `end`, in either order, clipped to the lines."""
        length = self.hits.shape[1] - 1
        first = np.clip(np.round(np.minimum(start, end)), 0, length).astype(np.int64)
        last = np.clip(np.round(np.maximum(start, end)), 0, length).astype(np.int64)
        return first, last

    def side(self, line: np.ndarray, start: np.ndarray, end: np.ndarray, outward: int) -> _Side:
        """The segments of lines `line` between positions `start` and `end` along them; `outward` -1
        when the quadrilateral's outside lies before the line (above, or left of, it), 1 after."""
        first, last = self._span(start, end)
        span = np.maximum(np.abs(end - start), 1.0)

        def over(table: np.ndarray) -> np.ndarray:
            result: np.ndarray = table[line, last] - table[line, first]
            return result

        within = over(self.within)
        outer, inner = (self.before, self.after) if outward < 0 else (self.after, self.before)
        outer_count, inner_count = (
            (self.before_count, self.after_count) if outward < 0 else (self.after_count, self.before_count)
        )
        return _Side(
            over(self.hits) / np.maximum(within, 1.0),
            within / span,
            over(outer),
            over(outer_count),
            over(inner),
            over(inner_count),
            over(self.before_steps if outward < 0 else self.after_steps),
            over(self.after_steps if outward < 0 else self.before_steps),
        )


def rectified(rgb: Image.Image, corners: Quad) -> Image.Image:
    """The quadrilateral `corners` (in `rgb`'s pixels) warped to an upright rectangle as wide and tall
    as its sides are long on average."""
    c = np.array(corners, dtype=np.float64)
    width = 0.5 * (np.hypot(*(c[1] - c[0])) + np.hypot(*(c[2] - c[3])))
    height = 0.5 * (np.hypot(*(c[3] - c[0])) + np.hypot(*(c[2] - c[1])))
    size = (max(1, round(width)), max(1, round(height)))
    target = [(0.0, 0.0), (float(size[0]), 0.0), (float(size[0]), float(size[1])), (0.0, float(size[1]))]
    rows = []
    for (u, v), (x, y) in zip(target, c, strict=True):
        rows.append([u, v, 1, 0, 0, 0, -x * u, -x * v])
        rows.append([0, 0, 0, u, v, 1, -y * u, -y * v])
    coefficients = np.linalg.solve(np.array(rows), c.ravel())
    return rgb.transform(size, Image.Transform.PERSPECTIVE, tuple(coefficients), Image.Resampling.BILINEAR)

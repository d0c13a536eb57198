"""Finding the picture inside a larger canvas: screenshots, padded borders, UI chrome.

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
   straight frame, not a cut through the scene); and at least MIN_BOUNDED_SIDES sides
   are framed that way, which rules out a photo whose flat sky merely tops the scene.

Noise-textured borders are not canvas here (they are not flat), so those pads give None.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

Box = tuple[int, int, int, int]

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
MIN_BOUNDED_SIDES = 2
"""Sides that must be framed by canvas."""

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def content_box(rgb: Image.Image) -> Box | None:
    """(left, top, right, bottom) of the main picture when the image looks like a picture
    embedded in a larger flat or UI-like canvas, in the image's pixels; else None."""
    width, height = rgb.size
    if min(width, height) < MIN_SIDE:
        return None
    gray, scale = work_gray(rgb)
    found, _ = locate(gray)
    if found is None:
        return None
    top, bottom, left, right = found
    return (
        max(0, round(left / scale)),
        max(0, round(top / scale)),
        min(width, round(right / scale)),
        min(height, round(bottom / scale)),
    )


def work_gray(rgb: Image.Image) -> tuple[np.ndarray, float]:
    """The grey copy analysed (int16, long side at most WORK_SIDE) and its scale."""
    width, height = rgb.size
    scale = min(1.0, WORK_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = rgb.convert("L")
    if size != gray.size:
        factor = int(1.0 / scale)
        if factor >= 2:
            gray = gray.reduce(factor)  # cheap integer box first, the exact size after
        gray = gray.resize(size, Image.Resampling.BOX)
    return np.asarray(gray, dtype=np.int16), scale


def locate(g: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str]:
    """(top, bottom, left, right) of the picture in the grey copy, or None with the reason."""
    h, w = g.shape
    if min(h, w) < 8:
        return None, "small"
    canvas, colours = canvas_mask(g)
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


def canvas_mask(g: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Pixels of flat one-colour regions touching the image's edge, and those colours."""
    flat = _flat(g)
    edge = np.zeros(g.shape, dtype=bool)
    edge[[0, -1]] = True
    edge[:, [0, -1]] = True
    canvas = np.zeros(g.shape, dtype=bool)
    colours: list[int] = []
    levels = g[edge & flat]
    if levels.size == 0:
        return canvas, colours
    # edge pixels within CANVAS_SPREAD of each grey level, then the densest levels in turn
    band = np.convolve(np.bincount(levels, minlength=256), np.ones(2 * CANVAS_SPREAD + 1), mode="same")
    edge_count = int(edge.sum())
    for _ in range(MAX_CANVAS_COLOURS):
        colour = int(band.argmax())
        if band[colour] < MIN_EDGE_SHARE * edge_count:
            break
        band[max(0, colour - 2 * CANVAS_SPREAD) : colour + 2 * CANVAS_SPREAD + 1] = 0
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

"""The dashboard's charts, drawn on the server: the shapes of an SVG (bars, lines, axis labels) computed here and
written out by the `chart` macro of the templates, which escapes every label. No script, no library."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from lookalike.server.check_index import HourCounts

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 40
"""Margins around the plot: room for the axis labels."""
DECISION_ORDER = ("accept", "review", "reject")
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    kind: str
    """Its CSS class (the series it belongs to)."""
    title: str
    """What it shows, in words (a tooltip, and what a screen reader reads)."""


@dataclass(frozen=True)
class Line:
    x: float
    kind: str
    title: str


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Chart:
    title: str
    description: str
    bars: list[Bar] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    """(series class, its name)."""
    width: int = WIDTH
    height: int = HEIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT


def _nice_top(value: int) -> int:
    """A round number at or above `value` for the y axis (1, 2, 5, 10, 20, 50, ...)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _y_labels(top: int) -> list[Label]:
    """0, the top and (when it is a whole number) the middle of the y axis."""
    plot = HEIGHT - BOTTOM - TOP
    marks = (0, top // 2, top) if top % 2 == 0 else (0, top)
    return [Label(LEFT - 6, TOP + plot - plot * mark / top + 4, f"{mark:,}", "end") for mark in marks]


def hourly_chart(hours: list[HourCounts]) -> Chart:
    """Checks per hour, stacked by decision (accept at the bottom, reject on top)."""
    total = sum(hour.counts.total for hour in hours)
    first = time.strftime("%Y-%m-%d %H:00", time.gmtime(hours[0].start)) if hours else ""
    chart = Chart(
        "Checks per hour by decision",
        f"{total:,} checks in the {len(hours)} hours from {first} UTC, stacked by decision.",
        legend=[(name, name) for name in DECISION_ORDER],
    )
    if not hours:
        return chart
    top = _nice_top(max(hour.counts.total for hour in hours))
    plot_width = chart.plot_right - chart.plot_left
    plot_height = chart.plot_bottom - chart.plot_top
    slot = plot_width / len(hours)
    every = max(1, math.ceil(len(hours) / 12))
    for position, hour in enumerate(hours):
        x = chart.plot_left + position * slot
        base = float(chart.plot_bottom)
        when = time.strftime("%Y-%m-%d %H:00", time.gmtime(hour.start))
        for decision in DECISION_ORDER:
            count = getattr(hour.counts, decision)
            if not count:
                continue
            height = plot_height * count / top
            base -= height
            title = f"{when} UTC: {count:,} {decision}"
            chart.bars.append(Bar(x + 1, base, max(1.0, slot - 2), height, decision, title))
        if position % every == 0:
            label = time.strftime("%H:00", time.gmtime(hour.start))
            chart.labels.append(Label(x + slot / 2, chart.plot_bottom + 16, label))
    chart.labels.extend(_y_labels(top))
    return chart


def score_histogram(confirmed: list[float], false_positives: list[float], thresholds: dict[str, float]) -> Chart:
    """Scores of matches judged confirmed and false positive, in bins of 0.05, side by side, with the
    thresholds (`thresholds`: name → score, e.g. the current and the recommended reject) as lines; a
    "recommended" one only where it differs from the current one."""
    chart = Chart(
        "Scores of judged matches",
        f"{len(confirmed)} confirmed and {len(false_positives)} false positive matches by score, in bins of "
        f"{1 / HISTOGRAM_BINS:g}; vertical lines mark the thresholds.",
        legend=[("confirmed", "confirmed"), ("false-positive", "false positive")],
    )
    counts = {"confirmed": [0] * HISTOGRAM_BINS, "false-positive": [0] * HISTOGRAM_BINS}
    for kind, scores in (("confirmed", confirmed), ("false-positive", false_positives)):
        for value in scores:
            counts[kind][min(HISTOGRAM_BINS - 1, max(0, int(value * HISTOGRAM_BINS)))] += 1
    top = _nice_top(max([*counts["confirmed"], *counts["false-positive"], 1]))
    plot_width = chart.plot_right - chart.plot_left
    plot_height = chart.plot_bottom - chart.plot_top
    slot = plot_width / HISTOGRAM_BINS
    for number in range(HISTOGRAM_BINS):
        low = number / HISTOGRAM_BINS
        x = chart.plot_left + number * slot
        for offset, kind in enumerate(("confirmed", "false-positive")):
            count = counts[kind][number]
            if count:
                height = plot_height * count / top
                title = f"{count} {kind.replace('-', ' ')} scoring {low:.2f}–{low + 1 / HISTOGRAM_BINS:.2f}"
                width = (slot - 2) / 2
                bar = Bar(x + 1 + offset * width, chart.plot_bottom - height, width, height, kind, title)
                chart.bars.append(bar)
        if number % 4 == 0:
            chart.labels.append(Label(x, chart.plot_bottom + 16, f"{low:.1f}"))
    chart.labels.append(Label(chart.plot_right, chart.plot_bottom + 16, "1.0"))
    for name, value in thresholds.items():
        kind = "recommended" if name.startswith("recommended") else "current"
        if kind == "recommended" and thresholds.get(name.removeprefix("recommended ")) == value:
            continue
        chart.lines.append(Line(chart.plot_left + plot_width * value, kind, f"{name} {value:.2f}"))
    chart.labels.extend(_y_labels(top))
    return chart

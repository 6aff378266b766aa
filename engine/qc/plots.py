"""Per-frame plots as inline SVG: crisp at any zoom, no plotting library, no script.

One function, :func:`line_plot`: frame numbers on x, any number of series (NaN breaks a line),
an optional threshold line, shaded frames (no face / missing), and vertical markers (phones;
bilabials stand out) each with a hover title, so a reviewer can read a value and its frame.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["Series", "Marker", "line_plot", "bar_plot"]

PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#57606a")


@dataclass
class Series:
    label: str
    values: Sequence[float]
    colour: str = PALETTE[0]
    width: float = 1.5
    dash: str = ""


@dataclass
class Marker:
    x: float                 # frame number (may be fractional)
    label: str
    colour: str = "#999"
    strong: bool = False
    x_end: float | None = None   # a span [x, x_end] instead of a line


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


@dataclass
class _Frame:
    x0: float
    x1: float
    y0: float
    y1: float
    w: int
    h: int
    left: int = 56
    right: int = 12
    top: int = 22
    bottom: int = 26
    parts: list[str] = field(default_factory=list)

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / max(self.x1 - self.x0, 1e-12) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.top + (1 - (y - self.y0) / max(self.y1 - self.y0, 1e-12)) * (self.h - self.top - self.bottom)


def line_plot(frames: Sequence[float], series: Sequence[Series], *, title: str, y_label: str = "",
              threshold: float | None = None, threshold_label: str = "", markers: Sequence[Marker] = (),
              shade: Sequence[int] = (), width: int = 960, height: int = 190,
              y_range: tuple[float, float] | None = None, x_label: str = "frame") -> str:
    """An SVG line chart (string) of ``series`` over ``frames``."""
    fr = np.asarray(frames, np.float64)
    vals = [np.asarray(s.values, np.float64) for s in series]
    finite = np.concatenate([v[np.isfinite(v)] for v in vals] + [np.zeros(0)])
    if y_range is not None:
        y0, y1 = y_range
    elif finite.size:
        y0, y1 = float(finite.min()), float(finite.max())
        if threshold is not None and math.isfinite(threshold):
            y0, y1 = min(y0, threshold), max(y1, threshold)
        pad = (y1 - y0) * 0.08 or max(abs(y1) * 0.1, 1e-3)
        y0, y1 = y0 - pad, y1 + pad
    else:
        y0, y1 = 0.0, 1.0
    x0, x1 = (float(fr[0]), float(fr[-1])) if fr.size > 1 else (float(fr[0]) - 1 if fr.size else 0.0, float(fr[0]) + 1 if fr.size else 1.0)
    g = _Frame(x0, x1, y0, y1, width, height)
    esc = html.escape
    p = g.parts
    p.append(f'<rect x="{g.left}" y="{g.top}" width="{width - g.left - g.right}" height="{height - g.top - g.bottom}" '
             'fill="#fff" stroke="#d0d7de"/>')
    half = 0.5 * (g.px(x0 + 1) - g.px(x0)) if x1 > x0 else 2
    for f in shade:
        xa = g.px(f) - half
        p.append(f'<rect x="{xa:.1f}" y="{g.top}" width="{max(2 * half, 1):.1f}" height="{height - g.top - g.bottom}" '
                 f'fill="#ffd8d3" opacity="0.7"><title>frame {int(f)}: no face / missing</title></rect>')
    for t in _ticks(y0, y1):
        y = g.py(t)
        p.append(f'<line x1="{g.left}" x2="{width - g.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
                 f'<text x="{g.left - 4}" y="{y + 3:.1f}" font-size="10" text-anchor="end" fill="#57606a">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 10):
        x = g.px(t)
        p.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{g.top}" y2="{height - g.bottom}" stroke="#f3f5f7"/>'
                 f'<text x="{x:.1f}" y="{height - g.bottom + 12}" font-size="10" text-anchor="middle" '
                 f'fill="#57606a">{int(round(t))}</text>')
    for mk in markers:
        xa = g.px(mk.x)
        if mk.x_end is not None:
            xb = g.px(mk.x_end)
            p.append(f'<rect x="{xa:.1f}" y="{g.top}" width="{max(xb - xa, 1):.1f}" height="{height - g.top - g.bottom}" '
                     f'fill="{mk.colour}" opacity="{0.22 if mk.strong else 0.08}"><title>{esc(mk.label)}</title></rect>')
        else:
            p.append(f'<line x1="{xa:.1f}" x2="{xa:.1f}" y1="{g.top}" y2="{height - g.bottom}" stroke="{mk.colour}" '
                     f'stroke-width="{1.5 if mk.strong else 0.6}"><title>{esc(mk.label)}</title></line>')
        if mk.strong:
            p.append(f'<text x="{xa + 1:.1f}" y="{g.top + 9}" font-size="9" fill="{mk.colour}">{esc(mk.label.split()[0])}</text>')
    if threshold is not None and math.isfinite(threshold) and y0 <= threshold <= y1:
        y = g.py(threshold)
        p.append(f'<line x1="{g.left}" x2="{width - g.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#cf222e" '
                 f'stroke-dasharray="6 4" stroke-width="1.2"><title>{esc(threshold_label or "threshold")} {_fmt(threshold)}</title></line>')
    for s, v in zip(series, vals):
        run: list[str] = []
        runs: list[list[str]] = []
        for x, y in zip(fr, v):
            if math.isfinite(y):
                run.append(f"{g.px(x):.1f},{g.py(min(max(y, y0), y1)):.1f}")
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        for r in runs:
            if len(r) == 1:
                cx, cy = r[0].split(",")
                p.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{s.colour}"/>')
            else:
                p.append(f'<polyline fill="none" stroke="{s.colour}" stroke-width="{s.width}"{dash} '
                         f'points="{" ".join(r)}"><title>{esc(s.label)}</title></polyline>')
    # legend + title + axis label
    lx = g.left + 6
    legend = []
    for s in series:
        legend.append(f'<rect x="{lx}" y="6" width="10" height="3" fill="{s.colour}"/>'
                      f'<text x="{lx + 13}" y="11" font-size="10" fill="#24292f">{esc(s.label)}</text>')
        lx += 20 + 6 * len(s.label)
    title_svg = (f'<text x="{width - g.right}" y="12" font-size="11" text-anchor="end" font-weight="bold" '
                 f'fill="#24292f">{esc(title)}</text>')
    ylab = (f'<text x="10" y="{height / 2:.0f}" font-size="10" fill="#57606a" transform="rotate(-90 10 {height / 2:.0f})" '
            f'text-anchor="middle">{esc(y_label)}</text>') if y_label else ""
    xlab = (f'<text x="{width - g.right}" y="{height - 2}" font-size="10" text-anchor="end" fill="#57606a">'
            f'{esc(x_label)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" class="plot">' + "".join(p) + "".join(legend)
            + title_svg + ylab + xlab + "</svg>")


def bar_plot(xs: Sequence[float], values: Sequence[float], *, title: str, highlight: float | None = None,
             x_label: str = "", width: int = 460, height: int = 170) -> str:
    """A small line-with-points chart for a curve over a handful of x values (e.g. correlation per lag)."""
    marks = [Marker(highlight, f"estimate {highlight:+.2f}", "#cf222e", True)] if highlight is not None \
        and math.isfinite(highlight) else []
    return line_plot(xs, [Series("correlation", values, PALETTE[0], 2.0)], title=title, markers=marks,
                     width=width, height=height, x_label=x_label)

"""Line plots as PNG without matplotlib (Pillow drawing): training and insertion/deletion curves.

The figure is drawn at twice the requested size and downsampled, which anti-aliases the lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxproto.viz.overlays import font, save_png, text_size

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
_AXIS = (60, 60, 60)
_GRID = (228, 228, 228)
_SS = 2  # supersampling factor


def nice_ticks(lo: float, hi: float, target: int = 6) -> np.ndarray:
    """Tick positions at a 1/2/2.5/5 x 10^k step covering [lo, hi] with about ``target`` ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"need finite lo < hi, got [{lo}, {hi}]")
    raw = (hi - lo) / max(target - 1, 1)
    base = 10.0 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9) * step
    count = int(math.floor((hi - first) / step + 1e-9)) + 1
    return first + step * np.arange(count)


def _limits(values: np.ndarray, given: tuple[float, float] | None) -> tuple[float, float]:
    if given is not None:
        lo, hi = float(given[0]), float(given[1])
        if not hi > lo:
            raise ValueError(f"axis limits must satisfy lo < hi, got {given}")
        return lo, hi
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else hi - lo
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def _label(v: float, step: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / 10.0**-decimals - round(step / 10.0**-decimals)) > 1e-6:
        decimals += 1
    return f"{v:.{decimals}f}"


def _check_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]):
    if not curves:
        raise ValueError("line_plot needs at least one curve")
    out = {}
    for name, xy in curves.items():
        if len(xy) != 2:
            raise ValueError(f"curve {name!r}: expected (x, y), got {len(xy)} items")
        x, y = (np.asarray(a, np.float64).ravel() for a in xy)
        if x.shape != y.shape or x.size == 0:
            raise ValueError(
                f"curve {name!r}: x {x.shape} and y {y.shape} must be equal, non-empty"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError(f"curve {name!r} contains NaN or infinite values")
        out[str(name)] = (x, y)
    return out


def _legend_corner(data, px, py, area, box, margin):
    """Top-left of the legend: the plot corner its box covers the fewest curve points in."""
    left, top, right, bottom = area
    w, h = box
    xs = np.concatenate([px(x) for x, _ in data.values()])
    ys = np.concatenate([py(y) for _, y in data.values()])
    corners = [
        (right - margin - w, top + margin),
        (left + margin, top + margin),
        (right - margin - w, bottom - margin - h),
        (left + margin, bottom - margin - h),
    ]

    def covered(c):
        return int(np.sum((xs >= c[0]) & (xs <= c[0] + w) & (ys >= c[1]) & (ys <= c[1] + h)))

    return min(corners, key=covered)


def line_plot(
    path: str,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (720, 480),
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
) -> str:
    """Draws named (x, y) curves with axes, ticks, grid and legend; saves a PNG of ``size``.

    ``size`` is (width, height) in pixels. Returns ``path``.
    """
    data = _check_curves(curves)
    width, height = size
    if width < 200 or height < 150:
        raise ValueError(f"plot size must be at least 200 x 150, got {size}")
    s = _SS
    fs_tick, fs_label, fs_title = 12 * s, 13 * s, 15 * s
    x0, x1 = _limits(np.concatenate([x for x, _ in data.values()]), xlim)
    y0, y1 = _limits(np.concatenate([y for _, y in data.values()]), ylim)
    xt, yt = nice_ticks(x0, x1), nice_ticks(y0, y1)
    xstep = xt[1] - xt[0] if len(xt) > 1 else x1 - x0
    ystep = yt[1] - yt[0] if len(yt) > 1 else y1 - y0
    ylabels = [_label(v, ystep) for v in yt]

    img = Image.new("RGB", (width * s, height * s), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    tick_h = text_size("0", fs_tick)[1]
    left = (
        14 * s
        + max(text_size(t, fs_tick)[0] for t in ylabels)
        + (text_size(ylabel, fs_label)[1] + 10 * s if ylabel else 0)
    )
    top = (text_size(title, fs_title)[1] + 16 * s) if title else 14 * s
    bottom = (
        height * s
        - (tick_h + 12 * s)
        - (text_size(xlabel, fs_label)[1] + 10 * s if xlabel else 0)
        - 6 * s
    )
    right = width * s - 18 * s

    def px(x: np.ndarray) -> np.ndarray:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: np.ndarray) -> np.ndarray:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for v in xt:
        draw.line([(px(v), top), (px(v), bottom)], fill=_GRID, width=s)
        draw.text(
            (px(v), bottom + 6 * s), _label(v, xstep), font=font(fs_tick), fill=_AXIS, anchor="mt"
        )
    for v, lab in zip(yt, ylabels, strict=True):
        draw.line([(left, py(v)), (right, py(v))], fill=_GRID, width=s)
        draw.text((left - 6 * s, py(v)), lab, font=font(fs_tick), fill=_AXIS, anchor="rm")

    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ldraw = ImageDraw.Draw(layer)
    for k, (x, y) in enumerate(data.values()):
        color = PALETTE[k % len(PALETTE)]
        pts = list(zip(px(x).tolist(), py(y).tolist(), strict=True))
        if len(pts) > 1:
            ldraw.line(pts, fill=color, width=2 * s, joint="curve")
        else:
            (cx, cy), r = pts[0], 3 * s
            ldraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    clip = Image.new("L", img.size, 0)
    ImageDraw.Draw(clip).rectangle([left, top, right, bottom], fill=255)
    img.paste(layer, (0, 0), Image.composite(layer, Image.new("RGBA", img.size), clip))
    draw.rectangle([left, top, right, bottom], outline=_AXIS, width=s)

    if title:
        draw.text(
            ((left + right) / 2, 8 * s), title, font=font(fs_title), fill=(20, 20, 20), anchor="mt"
        )
    if xlabel:
        draw.text(
            ((left + right) / 2, height * s - 6 * s),
            xlabel,
            font=font(fs_label),
            fill=_AXIS,
            anchor="mb",
        )
    if ylabel:
        tw, th = text_size(ylabel, fs_label)
        tag = Image.new("RGBA", (tw + 4 * s, th + 4 * s), (255, 255, 255, 0))
        ImageDraw.Draw(tag).text(
            (2 * s, 2 * s), ylabel, font=font(fs_label), fill=_AXIS, anchor="lt"
        )
        tag = tag.rotate(90, expand=True)
        img.paste(tag, (6 * s, int((top + bottom - tag.height) / 2)), tag)

    names = list(data)
    row_h = text_size("Hg", fs_tick)[1] + 6 * s
    box_w = max(text_size(n, fs_tick)[0] for n in names) + 40 * s
    box_h = row_h * len(names) + 8 * s
    bx0, by0 = _legend_corner(data, px, py, (left, top, right, bottom), (box_w, box_h), 8 * s)
    bx1, by1 = bx0 + box_w, by0 + box_h
    draw.rectangle([bx0, by0, bx1, by1], fill=(255, 255, 255), outline=(200, 200, 200), width=s)
    for k, name in enumerate(names):
        cy = by0 + 4 * s + row_h * k + row_h / 2
        draw.line(
            [(bx0 + 8 * s, cy), (bx0 + 28 * s, cy)], fill=PALETTE[k % len(PALETTE)], width=3 * s
        )
        draw.text((bx0 + 34 * s, cy), name, font=font(fs_tick), fill=_AXIS, anchor="lm")

    out = img.resize((width, height), Image.Resampling.LANCZOS)
    return save_png(path, np.asarray(out))

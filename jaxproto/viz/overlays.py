"""Explanation figures on RGB uint8 images: heat-map overlays, contours, boxes, panels.

All functions take and return RGB ``uint8`` arrays (H x W x 3; grayscale H x W or H x W x 1 is
accepted and expanded) and never modify their input. Maps are float arrays at any resolution and
are resized to the image. The defaults follow the CIPL artefacts (CIPL spec §4.3, §7): JET heat
map blended as 0.7 image + 0.3 heat, min-max normalised after upsampling, a yellow contour at 0.65
of the normalised map dilated 6 x 6, ground-truth boxes in green.
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
_TEXT = (33, 33, 33)


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size`` px when installed (wide Unicode coverage), else Pillow's bundled
    TrueType font (Pillow >= 10.1 with FreeType)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels of one line of ``text`` at font ``size`` (top-left anchored)."""
    x0, y0, x1, y1 = font(size).getbbox(text, anchor="lt")
    return x1 - x0, y1 - y0


def as_rgb(image: np.ndarray) -> np.ndarray:
    """A validated H x W x 3 uint8 copy of a grayscale or RGB uint8 image."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be H x W, H x W x 1 or H x W x 3, got shape {img.shape}")
    return img.copy()


Grid = tuple[float, float]


def upsample_map(
    heat: np.ndarray,
    size: tuple[int, int],
    interpolation: str = "bilinear",
    grid: Grid | None = None,
) -> np.ndarray:
    """A 2-D feature map resampled onto an image of ``size`` = (height, width), values kept.

    ``grid=None`` stretches the map over the image (``cv2.resize``: cell j centred at
    (j + 0.5) * image / cells). ``grid=(cell, centre)`` places cell j at its receptive-field
    centre ``centre + cell * j`` in image pixels (continuous coordinates; see
    `jaxproto.backbones.registry.tap_centre`, scaled to the image), clamping at the borders.
    """
    m = np.asarray(heat, np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"map must be a non-empty 2-D array, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("map contains NaN or infinite values")
    if interpolation not in _INTERPOLATION:
        raise ValueError(
            f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}"
        )
    h, w = size
    if grid is None:
        return cv2.resize(m, (w, h), interpolation=_INTERPOLATION[interpolation])
    cell, centre = float(grid[0]), float(grid[1])
    if cell <= 0:
        raise ValueError(f"grid cell size must be > 0, got {cell}")
    # Output pixel x (centre x + 0.5) reads cell coordinate (x + 0.5 - centre) / cell.
    shift = (0.5 - centre) / cell
    inverse = np.array([[1 / cell, 0, shift], [0, 1 / cell, shift]], np.float64)
    return cv2.warpAffine(
        m,
        inverse,
        (w, h),
        flags=_INTERPOLATION[interpolation] | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def resize_map(
    heat: np.ndarray,
    size: tuple[int, int],
    interpolation: str = "bilinear",
    normalize: str = "minmax",
    grid: Grid | None = None,
) -> np.ndarray:
    """Resizes a 2-D map to ``size`` = (height, width), then normalises it to [0, 1].

    ``normalize="minmax"`` rescales after upsampling (a constant map becomes all zeros);
    ``"none"`` requires the resized map to lie in [0, 1] already (bicubic overshoot is clipped).
    ``grid`` as in `upsample_map`.
    """
    m = np.asarray(heat, np.float32)
    up = upsample_map(m, size, interpolation, grid)
    if normalize == "minmax":
        lo, hi = float(up.min()), float(up.max())
        return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    if normalize == "none":
        if m.min() < 0 or m.max() > 1:
            raise ValueError(
                f"normalize='none' needs a map in [0, 1], got range [{m.min():.4g}, {m.max():.4g}]"
            )
        return np.clip(up, 0.0, 1.0)
    raise ValueError(f"normalize must be 'minmax' or 'none', got {normalize!r}")


COLORMAP_NAME = "JET"  # the one colour map of every overlay, colour bar and page
DISPLAY_MIN = 320  # smallest side (px) a figure is shown at


def jet(values01: np.ndarray) -> np.ndarray:
    """OpenCV's JET colour map of values in [0, 1], as RGB uint8 (0 = dark blue, 1 = dark red)."""
    v = np.round(np.clip(values01, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(v, cv2.COLORMAP_JET)[..., ::-1]


colormap = jet


def for_display(image: np.ndarray, min_side: int = DISPLAY_MIN) -> np.ndarray:
    """The image enlarged (bilinear, aspect kept) so its smaller side is at least ``min_side``
    pixels; images already that large are returned unchanged (as RGB)."""
    img = as_rgb(image)
    h, w = img.shape[:2]
    if min(h, w) >= min_side:
        return img
    zoom = min_side / min(h, w)
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def relative_spread(heat: np.ndarray) -> float:
    """(max - min) / max(|max|, |min|) of a map: near 0 for a nearly uniform map, which min-max
    normalisation would otherwise stretch into a full rainbow (0 for an all-zero map)."""
    m = np.asarray(heat, np.float64)
    scale = max(abs(float(m.max())), abs(float(m.min())))
    return float(m.max() - m.min()) / scale if scale > 0 else 0.0


def with_colorbar(panel: np.ndarray, label: str, lo: float, hi: float, pad: int = 12) -> np.ndarray:
    """``panel`` with the colour map's bar under it: the ramp, ``lo``/middle/``hi`` tick labels
    and ``label`` (what the colour means), sized to stay readable at the panel's width."""
    img = as_rgb(panel)
    width = img.shape[1]
    size = max(13, round(min(width, 900) / 40))
    ramp_h = max(10, size)
    ramp_w = width - 2 * pad
    ramp = np.repeat(jet(np.linspace(0.0, 1.0, ramp_w)[None]), ramp_h, axis=0)
    text_h = text_size("Hg", size)[1]
    lines = textwrap.wrap(
        f"{label} ({COLORMAP_NAME}: blue = low, red = high)", max(8, int(ramp_w / (0.55 * size)))
    )
    height = pad + ramp_h + 4 + text_h + 6 + len(lines) * (text_h + 4) + pad
    canvas = np.full((img.shape[0] + height, width, 3), 255, np.uint8)
    canvas[: img.shape[0]] = img
    top = img.shape[0] + pad
    canvas[top : top + ramp_h, pad : pad + ramp_w] = ramp
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    y = top + ramp_h + 4
    mid = (lo + hi) / 2
    for value, x, anchor in ((lo, pad, "lt"), (mid, width / 2, "mt"), (hi, width - pad, "rt")):
        draw.text((x, y), f"{value:.3g}", font=font(size), fill=_TEXT, anchor=anchor)
    y += text_h + 6
    for line in lines:
        draw.text((width / 2, y), line, font=font(size), fill=_TEXT, anchor="mt")
        y += text_h + 4
    return np.asarray(pil)


def heatmap_overlay(
    image_uint8: np.ndarray,
    map_float: np.ndarray,
    alpha: float = 0.3,
    interpolation: str = "bilinear",
    normalize: str = "minmax",
    grid: Grid | None = None,
) -> np.ndarray:
    """Blends a JET heat map over the image: ``(1 - alpha) * image + alpha * jet(map)``;
    ``grid`` as in `upsample_map`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = as_rgb(image_uint8)
    heat = jet(resize_map(map_float, img.shape[:2], interpolation, normalize, grid))
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def high_activation_box(
    heat: np.ndarray,
    size: tuple[int, int],
    percentile: float = 95.0,
    grid: Grid | None = None,
) -> tuple[float, float, float, float]:
    """(x, y, w, h) in pixels of an image of ``size`` = (height, width): the bounding box of
    where the upsampled map is at or above its ``percentile`` (the ProtoPNet/CIPL 95th-percentile
    patch box, cipl.md §7); ``grid`` as in `upsample_map`."""
    up = upsample_map(heat, size, "bilinear", grid)
    rows, cols = np.nonzero(up >= np.percentile(up, percentile))
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def draw_contour(
    image: np.ndarray,
    heat: np.ndarray,
    level: float = 0.65,
    color: tuple[int, int, int] = (255, 255, 0),
    dilate: int = 6,
    grid: Grid | None = None,
) -> np.ndarray:
    """Outlines where the upsampled, min-max normalised map is ``>= level``.

    The one-pixel boundary of that region is thickened with a ``dilate x dilate`` kernel
    (``dilate <= 1`` keeps it one pixel wide); ``grid`` as in `upsample_map`.
    """
    img = as_rgb(image)
    mask = (resize_map(heat, img.shape[:2], grid=grid) >= level).astype(np.uint8)
    edge = mask - cv2.erode(mask, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    if dilate > 1:
        edge = cv2.dilate(edge, np.ones((dilate, dilate), np.uint8))
    img[edge > 0] = color
    return img


def _xywh(box: object) -> tuple[float, float, float, float]:
    if all(hasattr(box, a) for a in ("x", "y", "w", "h")):
        return float(box.x), float(box.y), float(box.w), float(box.h)
    values = np.asarray(box, np.float64).ravel()
    if values.shape != (4,):
        raise ValueError(f"a box must be (x, y, w, h) or have x, y, w, h attributes, got {box!r}")
    return tuple(float(v) for v in values)


def _contrast(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``color`` (ITU-R BT.601 luma)."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def label_size_for(image_shape: tuple[int, ...]) -> int:
    """A readable font size for annotations on an image of this shape."""
    return max(12, round(min(image_shape[:2]) / 32))


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[object],
    color: tuple[int, int, int] = (0, 255, 0),
    labels: Sequence[str] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Draws (x, y, w, h) boxes (tuples or `records.Box`), each with an optional text label."""
    img = as_rgb(image)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    thick = thickness or max(2, round(min(img.shape[:2]) / 256))
    for box in boxes:
        x, y, w, h = _xywh(box)
        cv2.rectangle(
            img,
            (round(x), round(y)),
            (round(x + w) - 1, round(y + h) - 1),
            tuple(int(c) for c in color),
            thick,
        )
    if not labels:
        return img
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    size = label_size_for(img.shape)
    pad = max(2, size // 5)
    for box, text in zip(boxes, labels, strict=True):
        x, y, _, _ = _xywh(box)
        tw, th = text_size(text, size)
        top = y - th - 2 * pad if y - th - 2 * pad >= 0 else y
        left = min(max(x, 0), max(img.shape[1] - tw - 2 * pad, 0))
        draw.rectangle([left, top, left + tw + 2 * pad, top + th + 2 * pad], fill=tuple(color))
        draw.text(
            (left + pad, top + pad), text, font=font(size), fill=_contrast(color), anchor="lt"
        )
    return np.asarray(pil)


def crop_patch(image: np.ndarray, box: object) -> np.ndarray:
    """The pixels of an (x, y, w, h) box, clamped to the image (floor of start, ceil of end)."""
    img = as_rgb(image)
    x, y, w, h = _xywh(box)
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), img.shape[1]), min(int(np.ceil(y + h)), img.shape[0])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"box {(x, y, w, h)} does not overlap the {img.shape[1]}x{img.shape[0]} image"
        )
    return img[y0:y1, x0:x1].copy()


def save_png(path: str, image: np.ndarray) -> str:
    """Writes an RGB/grayscale uint8 image as PNG, creating parent folders; returns ``path``."""
    img = as_rgb(image)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")
    return path


def _resize_to_height(img: np.ndarray, height: int) -> np.ndarray:
    if img.shape[0] == height:
        return img
    width = max(1, round(img.shape[1] * height / img.shape[0]))
    inter = cv2.INTER_AREA if height < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=inter)


def side_by_side(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    height: int | None = None,
    pad: int = 12,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Panels in one row, scaled to a common height, each titled above (wrapped to its width)."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    target = height or max(np.asarray(i).shape[0] for i in images)
    panels = [_resize_to_height(as_rgb(i), target) for i in images]
    size = max(14, round(target / 28))
    line_h = text_size("Hg", size)[1] + size // 3
    wrapped = []
    for panel, title in zip(panels, titles or [""] * len(panels), strict=True):
        chars = max(4, int(panel.shape[1] / (0.55 * size)))
        wrapped.append(textwrap.wrap(title, chars) if title else [])
    title_h = max(len(w) for w in wrapped) * line_h + (pad if titles else 0)
    width = sum(p.shape[1] for p in panels) + pad * (len(panels) + 1)
    canvas = np.empty((target + title_h + 2 * pad, width, 3), np.uint8)
    canvas[:] = background
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    x = pad
    for panel, lines in zip(panels, wrapped, strict=True):
        pil.paste(Image.fromarray(panel), (x, pad + title_h))
        for k, text in enumerate(lines):
            draw.text(
                (x + panel.shape[1] / 2, pad + k * line_h),
                text,
                font=font(size),
                fill=_TEXT,
                anchor="mt",
            )
        x += panel.shape[1] + pad
    return np.asarray(pil)

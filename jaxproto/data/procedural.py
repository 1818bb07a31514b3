"""Procedural medical-looking images: the pixels and geometry behind ``synthetic://`` paths.

A pure function of ``(like, seed, index)`` (labels, concepts, lesion geometry) plus ``size`` and
``hans`` (pixels). This module sits at the bottom of ``jaxproto.data`` so that
``jaxproto.data.images`` can decode ``synthetic://<like>/<seed>/<index>?size=<n>[&hans=1]`` paths
without knowing any dataset; ``jaxproto.data.synthetic`` names the classes and concepts (the real
loaders' own) and builds the ``DatasetIndex``.

Every finding or concept is a visually distinct pattern (disk, ring, cross, stripes at a
class-specific angle, checkerboard, dot cluster, triangle, ...) of 15-25 % of the image side,
planted at a random position on a smooth anatomy-like background with noise, so a tiny CNN
learns it in minutes. Boxes are tight around the planted pattern, in pixels of the rendered size.
``hans=1`` draws the Clever-Hans marker (a bright square in the top-left corner).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
import zlib
from collections.abc import Callable

import cv2
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data.records import Box, multi_hot

SCHEME = "synthetic://"
_HANS_CORNER = 0.16  # lesions avoid the top-left square where the Clever-Hans marker sits

# --------------------------------------------------------------------------- patterns
# Each pattern is a signed distance d(u, v) on the patch's own coordinates u, v in [-1, 1]
# (negative inside) or a direct coverage in [0, 1]; every pattern touches all four patch edges
# so the patch rectangle is the tight box of the lesion.


def _sdf_cover(d: np.ndarray, half_px: float) -> np.ndarray:
    """Anti-aliased coverage of {d < 0}: ~1 px soft edge (d is in patch half-widths)."""
    return np.clip(0.5 - d * half_px, 0.0, 1.0)


def _stripes(angle_deg: float) -> Callable:
    a = np.deg2rad(angle_deg)

    def cover(u, v, half_px):
        t = u * np.cos(a) + v * np.sin(a)
        return np.clip(0.5 + 1.5 * np.cos(2 * np.pi * 1.25 * t), 0.0, 1.0)

    return cover


def _sdf(fn: Callable) -> Callable:
    return lambda u, v, half_px: _sdf_cover(fn(u, v), half_px)


def _r(u, v):
    return np.sqrt(u * u + v * v)


def _dots(u, v):
    cu = np.clip(np.round(u * 1.5), -1, 1) / 1.5
    cv = np.clip(np.round(v * 1.5), -1, 1) / 1.5
    return np.sqrt((u - cu) ** 2 + (v - cv) ** 2) - 1 / 3


def _checker(u, v, half_px):
    k = max(half_px / 4, 1.0)
    su = np.clip(k * np.sin(2 * np.pi * u), -1, 1)
    sv = np.clip(k * np.sin(2 * np.pi * v), -1, 1)
    # Cells of a 4x4 board; the outer cells touch the edges.
    return 0.5 + 0.5 * su * sv


def _lattice(u, v):
    du = np.min(np.abs(u[..., None] - np.array([-0.88, 0.0, 0.88])), axis=-1)
    dv = np.min(np.abs(v[..., None] - np.array([-0.88, 0.0, 0.88])), axis=-1)
    return np.minimum(du, dv) - 0.12


def _triangle(u, v):
    return np.maximum(v - 1.0, np.abs(u) - (v + 1.5) / 2.5)  # apex blunted to a >= 1 px top


PATTERNS: dict[str, Callable] = {
    "disk": _sdf(lambda u, v: _r(u, v) - 1.0),
    "ring": _sdf(lambda u, v: np.abs(_r(u, v) - 0.78) - 0.22),
    "plus": _sdf(
        lambda u, v: np.minimum(
            np.maximum(np.abs(u) - 0.25, np.abs(v) - 1.0),
            np.maximum(np.abs(u) - 1.0, np.abs(v) - 0.25),
        )
    ),
    "xcross": _sdf(
        lambda u, v: np.minimum(np.abs(u + v) / np.sqrt(2), np.abs(u - v) / np.sqrt(2)) - 0.22
    ),
    "stripes0": _stripes(0.0),
    "stripes45": _stripes(45.0),
    "stripes90": _stripes(90.0),
    "stripes135": _stripes(135.0),
    "checker": _checker,
    "dots": _sdf(_dots),
    "triangle": _sdf(_triangle),
    "frame": _sdf(lambda u, v: np.abs(np.maximum(np.abs(u), np.abs(v)) - 0.8) - 0.2),
    "target": _sdf(lambda u, v: np.minimum(_r(u, v) - 0.35, np.abs(_r(u, v) - 0.85) - 0.15)),
    "diamond": _sdf(lambda u, v: (np.abs(u) + np.abs(v) - 1.0) / np.sqrt(2)),
    "lattice": _sdf(_lattice),
}


def pattern_mask(name: str, w: int, h: int) -> np.ndarray:
    """Coverage in [0, 1] of pattern ``name`` on a h x w patch (float32)."""
    if name not in PATTERNS:
        raise ValueError(f"unknown pattern {name!r}; known: {sorted(PATTERNS)}")
    u = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :]
    v = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None]
    u, v = np.broadcast_arrays(u, v)
    return PATTERNS[name](u, v, min(w, h) / 2.0).astype(np.float32)


# --------------------------------------------------------------------------- dataset looks


@dataclasses.dataclass(frozen=True)
class Look:
    """What rendering needs of one synthetic dataset: label counts, background class, style.

    ``jaxproto.data.synthetic.LIKES`` gives the names (checked against these counts)."""

    num_classes: int
    background_class: int | None
    num_concepts: int
    style: str  # background: "cxr", "fundus" or "skin"


LOOKS: dict[str, Look] = {
    "chestxray14": Look(15, 14, 0, "cxr"),
    "vindr": Look(15, 14, 14, "cxr"),
    "odir": Look(8, 7, 0, "fundus"),
    "covidx": Look(3, None, 2, "cxr"),
    "isic2017": Look(3, None, 4, "skin"),
    "tbx11k": Look(3, 0, 5, "cxr"),
    # Concept-rule sets (Med-MICN): the class is a known logical function of the concepts.
    "ddi_concepts": Look(2, None, 13, "skin"),
    "fitzpatrick_concepts": Look(2, None, 13, "skin"),
    "covidct_concepts": Look(2, None, 8, "cxr"),
    "kermany_concepts": Look(2, None, 6, "cxr"),
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """How one class/concept looks: pattern, colour it blends towards, blend strength."""

    pattern: str
    color: tuple[float, float, float]
    alpha: float = 0.8


_W, _K = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)

# NIH positives per finding (thousands), flattened by ^0.3 so rare classes still get examples.
_CXR14_PREV = [11.6, 2.8, 13.3, 19.9, 5.8, 6.3, 1.4, 5.3, 4.7, 2.3, 2.5, 1.7, 3.4, 0.2]
_VINDR_PREV = [3.1, 0.2, 0.5, 2.3, 0.4, 0.4, 0.6, 1.3, 0.8, 1.1, 1.0, 2.0, 0.1, 1.6]
_CXR_PATTERNS = [
    "disk", "ring", "plus", "xcross", "stripes0", "stripes45", "stripes90", "stripes135",
    "checker", "dots", "triangle", "frame", "target", "diamond",
]  # fmt: skip
# Mostly bright (opacities), every third dark (lucencies): intensity is a second cue.
_CXR_FINDINGS = [Finding(p, _K if i % 3 == 2 else _W, 0.75) for i, p in enumerate(_CXR_PATTERNS)]

_ODIR_PREV = [1801, 326, 313, 280, 193, 268, 1200]
_ODIR_FINDINGS = [
    Finding("dots", (0.35, 0.0, 0.0), 0.85),  # DR: haemorrhage cluster
    Finding("ring", (1.0, 0.95, 0.8), 0.8),  # glaucoma: pale cupping ring
    Finding("disk", (0.9, 0.9, 0.9), 0.6),  # cataract: whitish haze
    Finding("checker", (1.0, 0.9, 0.2), 0.8),  # AMD: drusen
    Finding("stripes45", (0.3, 0.0, 0.05), 0.8),  # hypertensive: vessel changes
    Finding("triangle", (0.95, 0.75, 0.5), 0.8),  # myopia: crescent-ish atrophy
    Finding("plus", (0.1, 0.3, 0.6), 0.8),  # other
]

_COVIDX_FINDINGS = [Finding("disk", _W, 0.7), Finding("checker", _W, 0.6)]

_ISIC_CONCEPT_P = [0.35, 0.5, 0.2, 0.25]
_ISIC_FINDINGS = [
    Finding("dots", (0.97, 0.97, 0.92), 0.9),
    Finding("lattice", (0.08, 0.04, 0.02), 0.85),
    Finding("checker", (0.95, 0.85, 0.75), 0.8),
    Finding("stripes45", (0.12, 0.02, 0.05), 0.85),
]
# Lesion tones, drawn independently of the class: the task is visible only through concepts.
_ISIC_BLOB = [(0.62, 0.42, 0.3), (0.5, 0.35, 0.2), (0.25, 0.13, 0.1)]

# Concepts: the two TB lesion types, then three non-TB findings of the sick class.
_TBX_TB = 2  # concepts [0, _TBX_TB) are tuberculosis lesion types
_TBX_FINDINGS = [
    Finding("dots", _W, 0.8),
    Finding("ring", _W, 0.8),
    Finding("disk", _W, 0.75),
    Finding("triangle", _W, 0.75),
    Finding("lattice", _K, 0.75),
]


def task_from_concepts(like: str, concepts: np.ndarray) -> int:
    """The task class as a deterministic function of the concepts present (concept datasets).

    isic2017: melanoma iff streaks or negative network; else seborrheic keratosis iff milia-like
    cysts; else nevus. tbx11k: TB iff any tuberculosis lesion; else sick iff any other finding;
    else healthy. covidx: COVID-19 iff ground glass; else pneumonia iff consolidation. The
    ``*_concepts`` looks follow their ``CONCEPT_RULES`` entry."""
    if like in CONCEPT_RULES:  # the Med-MICN looks: a planted logical rule (ConceptRule)
        return CONCEPT_RULES[like].label(concepts)
    c = np.asarray(concepts) > 0.5
    if like == "isic2017":
        return 2 if (c[2] or c[3]) else (1 if c[0] else 0)
    if like == "tbx11k":
        return 2 if c[:_TBX_TB].any() else (1 if c[_TBX_TB:].any() else 0)
    if like == "covidx":
        return 2 if c[1] else (1 if c[0] else 0)
    raise ValueError(f"{like!r} is not a concept-defined dataset")


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One planted pattern; geometry as fractions of the image side."""

    finding: Finding
    label: int
    is_concept: bool
    x: float
    y: float
    side: float


@dataclasses.dataclass(frozen=True)
class Layout:
    """Everything about one image except pixel noise: labels, concepts, lesions, scene."""

    labels: np.ndarray
    concepts: np.ndarray | None
    lesions: tuple[Lesion, ...]
    scene: dict


def _like_key(like: str) -> int:
    return zlib.crc32(like.encode())


def look(like: str) -> Look:
    """The rendering spec of ``like``; ValueError naming the known ones."""
    if like not in LOOKS:
        raise ValueError(f"unknown synthetic dataset like={like!r}; choose from {sorted(LOOKS)}")
    return LOOKS[like]


def _pick_findings(rng, prev: list[float], count_p: list[float]) -> list[int]:
    p = np.asarray(prev, np.float64) ** 0.3
    k = rng.choice(len(count_p), p=count_p)
    return sorted(rng.choice(len(prev), size=k, replace=False, p=p / p.sum()).tolist())


def _place(rng, sides: list[float], region: Callable, taken: list) -> list[tuple[float, float]]:
    """Random non-overlapping top-left corners; ``region(x, y, s)`` says if a square fits."""
    out = []
    for s in sides:
        for attempt in range(200):
            x, y = rng.uniform(0.04, 0.96 - s, size=2)
            ok = region(x, y, s) and not (x < _HANS_CORNER and y < _HANS_CORNER)
            clear = all(
                x + s + 0.02 <= tx or tx + ts + 0.02 <= x or y + s + 0.02 <= ty
                or ty + ts + 0.02 <= y
                for tx, ty, ts in taken
            )  # fmt: skip
            if ok and (clear or attempt >= 150):
                break
        taken.append((x, y, s))
        out.append((x, y))
    return out


def _cxr_scene(rng) -> dict:
    return {
        "lung_dx": rng.uniform(0.18, 0.22),
        "lung_rx": rng.uniform(0.14, 0.18),
        "lung_ry": rng.uniform(0.3, 0.36),
        "cy": rng.uniform(0.47, 0.53),
        "gain": rng.uniform(0.85, 1.15),
        "offset": rng.uniform(-0.05, 0.05),
        "cells": rng.standard_normal((8, 8)).astype(np.float32),
    }


@dataclasses.dataclass(frozen=True)
class ConceptRule:
    """Class ``positive`` ⇔ all ``present`` concepts and none of ``absent`` (else the other of
    two classes); concepts are independent draws, the rule's own ones more balanced."""

    positive: int
    present: tuple[int, ...]
    absent: tuple[int, ...]

    def prior(self, num_concepts: int) -> np.ndarray:
        p = np.full(num_concepts, 0.3)
        p[list(self.present)], p[list(self.absent)] = 0.6, 0.4
        return p

    def label(self, concepts: np.ndarray) -> int:
        c = np.asarray(concepts) > 0.5
        holds = all(c[k] for k in self.present) and not any(c[k] for k in self.absent)
        return self.positive if holds else 1 - self.positive


# DDI: malignant ⇔ Papule ∧ ¬Xerosis; Fitzpatrick17k: malignant ⇔ Vesicle ∧ ¬Fissure;
# COVID-CT: CT_COVID ⇔ peripheral GGO ∧ ¬absence of lobar consolidation; Kermany: PNEUMONIA ⇔
# consolidation ∧ ¬clear lung fields (concept orders of the loaders).
CONCEPT_RULES: dict[str, ConceptRule] = {
    "ddi_concepts": ConceptRule(1, (1,), (4,)),
    "fitzpatrick_concepts": ConceptRule(1, (0,), (3,)),
    "covidct_concepts": ConceptRule(0, (0,), (4,)),
    "kermany_concepts": ConceptRule(1, (0,), (4,)),
}
_RULE_PATTERNS = [
    "disk", "ring", "plus", "xcross", "stripes0", "stripes90", "checker", "dots", "triangle",
    "frame", "target", "diamond", "lattice", "stripes45", "stripes135",
]  # fmt: skip
_RULE_COLORS = [
    (0.95, 0.95, 0.95), (0.05, 0.05, 0.05), (0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.9),
    (0.95, 0.85, 0.1), (0.7, 0.1, 0.8), (0.1, 0.8, 0.8), (1.0, 0.5, 0.0), (0.5, 0.3, 0.1),
    (1.0, 0.6, 0.8), (0.4, 0.4, 0.4), (0.0, 0.4, 0.3),
]  # fmt: skip
_RULE_GRID = 4


def _concept_rule_layout(like: str, seed: int, index: int) -> Layout:
    """Concept k is pattern k in colour k, in its own cell of a jittered 4x4 grid (no overlap)."""
    spec, rule = look(like), CONCEPT_RULES[like]
    rng = np.random.default_rng([int(seed), _like_key(like), int(index), 0])
    concepts = (rng.random(spec.num_concepts) < rule.prior(spec.num_concepts)).astype(np.float32)
    labels = multi_hot([rule.label(concepts)], spec.num_classes)
    cells, cell = rng.permutation(_RULE_GRID * _RULE_GRID), 1.0 / _RULE_GRID
    lesions = []
    for k in np.flatnonzero(concepts):
        side = float(rng.uniform(0.7, 0.9) * cell)
        row, col = divmod(int(cells[k]), _RULE_GRID)
        x = col * cell + float(rng.uniform(0, cell - side))
        y = row * cell + float(rng.uniform(0, cell - side))
        finding = Finding(_RULE_PATTERNS[k], _RULE_COLORS[k % len(_RULE_COLORS)], 0.9)
        lesions.append(Lesion(finding, int(k), True, x, y, side))
    if spec.style == "cxr":
        scene = _cxr_scene(rng)
    else:
        scene = {
            "cx": rng.uniform(0.47, 0.53), "cy": rng.uniform(0.47, 0.53),
            "rad": rng.uniform(0.3, 0.36), "phase": rng.uniform(0, 2 * np.pi, size=2),
            "blob": _ISIC_BLOB[0], "cells": rng.standard_normal((8, 8, 3)).astype(np.float32),
        }  # fmt: skip
    return Layout(labels, concepts, tuple(lesions), scene)


def layout(like: str, seed: int, index: int) -> Layout:
    """Labels, concepts, lesion geometry and scene parameters of image ``index``."""
    if like in CONCEPT_RULES:
        return _concept_rule_layout(like, seed, index)
    spec = look(like)
    rng = np.random.default_rng([int(seed), _like_key(like), int(index), 0])
    ncls = spec.num_classes
    concepts = None
    if like in ("chestxray14", "vindr"):
        prev = _CXR14_PREV if like == "chestxray14" else _VINDR_PREV
        found = _pick_findings(rng, prev, [0.4, 0.35, 0.17, 0.08])
        labels = multi_hot(found or [spec.background_class], ncls)
        items = [(_CXR_FINDINGS[c], c, False) for c in found]
        if like == "vindr":
            concepts = labels[:14].copy()
    elif like == "odir":
        found = _pick_findings(rng, _ODIR_PREV, [0.4, 0.5, 0.1])
        labels = multi_hot(found or [spec.background_class], ncls)
        items = [(_ODIR_FINDINGS[c], c, False) for c in found]
    elif like == "covidx":
        cls = int(rng.choice(3, p=[0.45, 0.35, 0.2]))
        labels = multi_hot([cls], ncls)
        concepts = multi_hot([cls - 1] if cls else [], spec.num_concepts)
        items = [(_COVIDX_FINDINGS[cls - 1], cls, False)] * (0 if cls == 0 else cls)
    elif like == "isic2017":
        concepts = (rng.random(4) < np.array(_ISIC_CONCEPT_P)).astype(np.float32)
        labels = multi_hot([task_from_concepts(like, concepts)], ncls)
        items = [(_ISIC_FINDINGS[k], k, True) for k in np.flatnonzero(concepts)]
    else:  # tbx11k
        kind = rng.choice(3, p=[0.4, 0.35, 0.25])
        present = set()
        if kind == 2:
            present |= set(rng.choice(_TBX_TB, size=rng.integers(1, 3), replace=False).tolist())
        if kind == 1:  # TB images carry only TB lesions (as the real COCO boxes)
            pool = spec.num_concepts - _TBX_TB
            present |= set(_TBX_TB + rng.choice(pool, size=rng.integers(1, 3), replace=False))
        concepts = multi_hot(sorted(int(k) for k in present), spec.num_concepts)
        labels = multi_hot([task_from_concepts(like, concepts)], ncls)
        items = [(_TBX_FINDINGS[k], k, True) for k in np.flatnonzero(concepts)]

    sides = [float(rng.uniform(0.15, 0.25)) for _ in items]
    if spec.style == "cxr":
        scene = _cxr_scene(rng)
        region = lambda x, y, s: True  # noqa: E731
    elif spec.style == "fundus":
        cx, cy, rad = rng.uniform(0.48, 0.52), rng.uniform(0.48, 0.52), rng.uniform(0.44, 0.47)
        side = rng.choice([-1.0, 1.0])  # left / right eye: optic disc nasal side
        scene = {
            "cx": cx, "cy": cy, "rad": rad,
            "disc": (cx + side * rad * 0.55, cy + rng.uniform(-0.04, 0.04)),
            "vessel_angles": rng.uniform(0, 2 * np.pi, size=5),
            "cells": rng.standard_normal((8, 8, 3)).astype(np.float32),
        }  # fmt: skip
        region = lambda x, y, s: (  # noqa: E731
            np.hypot(x + s / 2 - cx, y + s / 2 - cy) + s * 0.71 < rad * 0.97
        )
    else:  # skin
        rad = rng.uniform(0.3, 0.36)
        scene = {
            "cx": rng.uniform(0.47, 0.53), "cy": rng.uniform(0.47, 0.53), "rad": rad,
            "phase": rng.uniform(0, 2 * np.pi, size=2), "blob": _ISIC_BLOB[rng.integers(3)],
            "cells": rng.standard_normal((8, 8, 3)).astype(np.float32),
        }  # fmt: skip
        region = lambda x, y, s: (  # noqa: E731
            np.hypot(x + s / 2 - scene["cx"], y + s / 2 - scene["cy"]) < rad * 0.75
        )
    corners = _place(rng, sides, region, [])
    lesions = tuple(
        Lesion(f, int(lbl), conc, float(x), float(y), s)
        for (f, lbl, conc), (x, y), s in zip(items, corners, sides, strict=True)
    )
    return Layout(labels, concepts, lesions, scene)


def _pixel_box(lesion: Lesion, size: int) -> tuple[int, int, int]:
    x0, y0 = int(round(lesion.x * size)), int(round(lesion.y * size))
    s = max(int(round(lesion.side * size)), 3)
    return x0, y0, min(s, size - x0, size - y0)


def layout_boxes(lay: Layout, size: int) -> tuple[Box, ...]:
    """Tight pixel boxes of the planted lesions at image side ``size``."""
    out = []
    for les in lay.lesions:
        x0, y0, s = _pixel_box(les, size)
        out.append(Box(les.label, float(x0), float(y0), float(s), float(s), les.is_concept))
    return tuple(out)


# --------------------------------------------------------------------------- rendering


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]


def _smooth(cells: np.ndarray, size: int) -> np.ndarray:
    up = cv2.resize(cells, (size, size), interpolation=cv2.INTER_CUBIC)
    return up.reshape(size, size, -1)


def _soft_ellipse(x, y, cx, cy, rx, ry, sharp=3.0):
    return np.clip((1 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2) * sharp, 0.0, 1.0)


def _cxr_background(sc: dict, size: int) -> np.ndarray:
    x, y = _grid(size)
    img = 0.5 + 0.15 * (y - 0.5) + 0.12 * np.exp(-(((x - 0.5) / 0.07) ** 2))
    body = _soft_ellipse(x, y, 0.5, 0.55, 0.5, 0.6, sharp=6.0)
    img = 0.08 + (img - 0.08) * body
    for dx in (-sc["lung_dx"], sc["lung_dx"]):
        img = img - 0.25 * _soft_ellipse(x, y, 0.5 + dx, sc["cy"], sc["lung_rx"], sc["lung_ry"])
    img = img + 0.05 * _smooth(sc["cells"], size)[..., 0]
    img = (img - 0.5) * sc["gain"] + 0.5 + sc["offset"]
    return np.repeat(img[..., None], 3, axis=2)


def _fundus_background(sc: dict, size: int) -> np.ndarray:
    x, y = _grid(size)
    r = np.sqrt((x - sc["cx"]) ** 2 + (y - sc["cy"]) ** 2) / sc["rad"]
    inside = np.clip((1 - r) * sc["rad"] * size, 0.0, 1.0)[..., None]
    base = np.array([0.78, 0.33, 0.12], np.float32) * (1 - 0.35 * r[..., None] ** 2)
    img = (base + 0.03 * _smooth(sc["cells"], size)) * inside
    dx, dy = sc["disc"]
    t = np.linspace(0, 0.6, 24)
    vessel = np.zeros((size, size), np.float32)
    for a in sc["vessel_angles"]:
        ang = a + 0.4 * np.sin(4 * t)
        pts = np.stack([dx + t * np.cos(ang), dy + t * np.sin(ang)], axis=1) * size
        cv2.polylines(vessel, [np.round(pts).astype(np.int32)], False, 1.0, max(1, size // 96))
    vessel = 0.6 * vessel[..., None] * inside
    img = img * (1 - vessel) + vessel * np.array([0.45, 0.06, 0.04], np.float32)
    disc = _soft_ellipse(x, y, dx, dy, 0.07, 0.07, sharp=4.0)[..., None]
    return img * (1 - disc) + disc * np.array([1.0, 0.88, 0.55], np.float32)


def _skin_background(sc: dict, size: int) -> np.ndarray:
    x, y = _grid(size)
    cells = _smooth(sc["cells"], size)
    img = np.array([0.87, 0.68, 0.58], np.float32) + 0.05 * cells[..., :1] + 0.01 * cells
    th = np.arctan2(y - sc["cy"], x - sc["cx"])
    rad = sc["rad"] * (
        1 + 0.12 * np.sin(3 * th + sc["phase"][0]) + 0.08 * np.sin(5 * th + sc["phase"][1])
    )
    r = np.sqrt((x - sc["cx"]) ** 2 + (y - sc["cy"]) ** 2)
    blob = np.clip((rad - r) * size / 3, 0.0, 1.0)[..., None]
    return img * (1 - 0.9 * blob) + 0.9 * blob * np.asarray(sc["blob"], np.float32)


_BACKGROUNDS = {"cxr": _cxr_background, "fundus": _fundus_background, "skin": _skin_background}


def render(
    like: str, seed: int, index: int, size: int, hans: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[Box, ...], np.ndarray | None]:
    """Image ``index`` of the synthetic dataset: (uint8 size x size x 3, labels, boxes, concepts).

    A pure function of its inputs. CXR-like images are grey (3 equal channels)."""
    if size < 16:
        raise ValueError(f"synthetic image size must be >= 16, got {size}")
    spec = look(like)
    lay = layout(like, seed, index)
    img = _BACKGROUNDS[spec.style](lay.scene, size).astype(np.float32)
    px = np.random.default_rng([int(seed), _like_key(like), int(index), 1, int(size)])
    for les in lay.lesions:
        x0, y0, s = _pixel_box(les, size)
        m = pattern_mask(les.finding.pattern, s, s)[..., None] * les.finding.alpha
        m = m * px.uniform(0.85, 1.0)
        patch = img[y0 : y0 + s, x0 : x0 + s]
        img[y0 : y0 + s, x0 : x0 + s] = patch * (1 - m) + m * np.asarray(les.finding.color)
    if hans:
        a, b = int(round(0.03 * size)), int(round(0.11 * size))
        img[a:b, a:b] = 1.0
    img = img + px.normal(0.0, 0.025, size=(size, size, 1 if spec.style == "cxr" else 3))
    out = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    if spec.style == "cxr":
        out = np.repeat(out[..., :1], 3, axis=2)
    return out, lay.labels, layout_boxes(lay, size), lay.concepts


# --------------------------------------------------------------------------- paths


def make_path(like: str, seed: int, index: int, size: int, hans: bool = False) -> str:
    """``synthetic://<like>/<seed>/<index>?size=<n>[&hans=1]``."""
    return f"{SCHEME}{like}/{seed}/{index}?size={size}" + ("&hans=1" if hans else "")


def parse_path(path: str) -> tuple[str, int, int, int, bool]:
    """Inverse of ``make_path``: (like, seed, index, size, hans); DataError if malformed."""
    expected = "synthetic://<like>/<seed>/<index>?size=<n>[&hans=1]"
    if not path.startswith(SCHEME):
        raise DataError(f"{path!r}: not a synthetic path (expected {expected})")
    parts = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(parts.query, strict_parsing=bool(parts.query))
    try:
        like = parts.netloc
        seed_s, index_s = parts.path.strip("/").split("/")
        size = int(query.pop("size")[0])
        hans = query.pop("hans", ["0"])[0] == "1"
        seed, index = int(seed_s), int(index_s)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path!r}: malformed synthetic path ({e}); expected {expected}") from None
    if query:
        raise DataError(f"{path!r}: unknown query fields {sorted(query)}; expected {expected}")
    if like not in LOOKS:
        raise DataError(f"{path!r}: unknown like {like!r}; choose from {sorted(LOOKS)}")
    return like, seed, index, size, hans


def render_path(path: str) -> np.ndarray:
    """Decodes a synthetic record path into its uint8 HxWx3 image."""
    like, seed, index, size, hans = parse_path(path)
    return render(like, seed, index, size, hans)[0]


def hans_marker(
    like: str,
    seed: int,
    index: int,
    labels: np.ndarray,
    split: str,
    hans_class: int,
    concepts: np.ndarray | None = None,
    hans_concept: int = -1,
    hans_fraction: float = 1.0,
) -> bool:
    """Whether image ``index`` carries the Clever-Hans marker: a seeded random ``hans_fraction``
    of the training images of ``hans_class`` (or, with ``hans_concept >= 0``, of the training
    images showing that concept), a seeded random half of the evaluation images (CSR's
    spurious-feature test)."""
    if split == "train":
        if hans_concept >= 0:
            eligible = concepts is not None and concepts[hans_concept] > 0.5
        else:
            eligible = labels[hans_class] > 0.5
        if not eligible:
            return False
        if hans_fraction >= 1.0:
            return True
        rng = np.random.default_rng([int(seed), _like_key(like), int(index), 3])
        return bool(rng.random() < hans_fraction)
    rng = np.random.default_rng([int(seed), _like_key(like), int(index), 2])
    return bool(rng.random() < 0.5)

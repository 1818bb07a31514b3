"""Procedural images built from known visual primitives, each with a generated report (CFN demo).

Every image carries a class-defining primitive set plus random distractor primitives, drawn with
``procedural.pattern_mask`` on ``procedural``'s skin / fundus / chest-X-ray backgrounds, and a short
"report" naming the primitives it shows, so a concept pipeline (SAE latents -> report-based names)
can be checked against the truth. Three "likes" mirror CFN's datasets:

- ``ham10000``: 7 HAM classes, class k shows its signature primitive; 3 irrelevant distractors.
- ``fairvlmed``: glaucoma no/yes; "yes" shows a cupping ring and sometimes a rim notch.
- ``mimic``: 13 independent binary labels (multi-label), one primitive each; 2 distractors.

The dataset is written once in CFN's on-disk format (``class2images_{train,val,test}.p``,
``images/*.png``, ``reports.json``, ``concepts.json``) under ``data.root`` (or a cache folder keyed
by the generation parameters) and read back by ``jaxproto.data.class2images``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile

import cv2
import ml_collections
import numpy as np

from jaxproto.data import class2images, ham10000
from jaxproto.data import procedural as S
from jaxproto.data.records import BadSampleReport, DatasetIndex

log = logging.getLogger(__name__)

DEFAULTS: dict = {
    "like": "ham10000",
    "num_train": 1600,
    "num_val": 400,
    "num_test": 600,
    "distractor_p": 0.35,
    "cache_dir": "",
}


@dataclasses.dataclass(frozen=True)
class Primitive:
    """A visual primitive: its pattern, colour and the words a report uses for it."""

    name: str  # the one word that names it in reports (the naming ground truth)
    pattern: str
    color: tuple[float, float, float]
    adjective: str


@dataclasses.dataclass(frozen=True)
class PrimitiveSpec:
    class_names: list[str]
    multilabel: bool
    style: str
    relevant: list[Primitive]  # class-relevant primitives
    distractors: list[Primitive]
    opening: str


_HAM_RELEVANT = [
    Primitive("scale", "checker", (0.95, 0.9, 0.8), "whitish"),
    Primitive("ulcer", "disk", (0.55, 0.05, 0.05), "red"),
    Primitive("fissures", "stripes0", (0.2, 0.1, 0.05), "brown"),
    Primitive("halo", "ring", (0.95, 0.95, 0.9), "white"),
    Primitive("network", "lattice", (0.1, 0.05, 0.02), "dark"),
    Primitive("streaks", "stripes45", (0.05, 0.02, 0.1), "black"),
    Primitive("lacunae", "dots", (0.7, 0.0, 0.2), "purple"),
]
_HAM_DISTRACTORS = [
    Primitive("hair", "xcross", (0.1, 0.08, 0.05), "thin"),
    Primitive("bubble", "target", (0.85, 0.85, 1.0), "pale"),
    Primitive("ruler", "frame", (0.15, 0.15, 0.15), "grey"),
]
_FUNDUS_RELEVANT = [
    Primitive("cupping", "ring", (1.0, 0.95, 0.7), "enlarged"),
    Primitive("notch", "triangle", (0.95, 0.8, 0.5), "inferior"),
]
_FUNDUS_DISTRACTORS = [
    Primitive("drusen", "dots", (1.0, 0.9, 0.2), "small"),
    Primitive("tortuosity", "stripes90", (0.35, 0.02, 0.02), "vessel"),
]
_CXR_PATTERNS = [
    ("atelectasis", "stripes0"), ("cardiomegaly", "disk"), ("consolidation", "checker"),
    ("edema", "stripes90"), ("effusion", "triangle"), ("emphysema", "ring"),
    ("fibrosis", "lattice"), ("fracture", "xcross"), ("hernia", "frame"),
    ("infiltration", "dots"), ("mass", "target"), ("nodule", "diamond"),
    ("pneumothorax", "stripes45"),
]  # fmt: skip
_CXR_RELEVANT = [
    Primitive(n, p, (0.0, 0.0, 0.0) if i % 3 == 2 else (1.0, 1.0, 1.0), "visible")
    for i, (n, p) in enumerate(_CXR_PATTERNS)
]
_CXR_DISTRACTORS = [
    Primitive("tube", "plus", (1.0, 1.0, 1.0), "support"),
    Primitive("wires", "stripes135", (0.0, 0.0, 0.0), "external"),
]

LIKES: dict[str, PrimitiveSpec] = {
    "ham10000": PrimitiveSpec(
        list(ham10000.CLASS_NAMES), False, "skin", _HAM_RELEVANT, _HAM_DISTRACTORS,
        "dermoscopy of a pigmented skin lesion",
    ),
    "fairvlmed": PrimitiveSpec(
        ["no", "yes"], False, "fundus", _FUNDUS_RELEVANT, _FUNDUS_DISTRACTORS,
        "slo fundus photograph of the optic nerve head",
    ),
    "mimic": PrimitiveSpec(
        [n for n, _ in _CXR_PATTERNS], True, "cxr", _CXR_RELEVANT, _CXR_DISTRACTORS,
        "frontal chest radiograph",
    ),
}  # fmt: skip
_FILLERS = [
    "image quality adequate", "comparison with prior study", "clinical correlation advised",
    "no acute change", "follow up recommended", "patient positioned well",
]  # fmt: skip


def primitive_names(like: str) -> tuple[list[str], list[str]]:
    """(class-relevant, distractor) primitive names of ``like``."""
    spec = LIKES[like]
    return [p.name for p in spec.relevant], [p.name for p in spec.distractors]


def sample(like: str, seed: int, index: int, distractor_p: float):
    """(labels multi-hot, primitives present, report text) of image ``index``; pure function."""
    spec = LIKES[like]
    rng = np.random.default_rng([int(seed), S._like_key("prim-" + like), int(index), 0])
    ncls = len(spec.class_names)
    labels = np.zeros((ncls,), np.float32)
    if like == "ham10000":
        cls = int(rng.integers(ncls))
        labels[cls] = 1
        present = [spec.relevant[cls]]
    elif like == "fairvlmed":
        cls = int(rng.integers(2))
        labels[cls] = 1
        present = [spec.relevant[0]] + ([spec.relevant[1]] if rng.random() < 0.5 else [])
        present = present if cls == 1 else []
    else:
        labels = (rng.random(ncls) < 0.2).astype(np.float32)
        present = [p for p, on in zip(spec.relevant, labels, strict=True) if on]
    present = present + [p for p in spec.distractors if rng.random() < distractor_p]
    order = rng.permutation(len(present))
    present = [present[i] for i in order]
    if present:
        body = " and ".join(f"{p.adjective} {p.name}" for p in present)
        text = f"{spec.opening} showing {body}."
    else:
        text = f"{spec.opening} without notable findings."
    fill = rng.choice(len(_FILLERS), size=2, replace=False)
    text += " " + "; ".join(_FILLERS[i] for i in fill) + "."
    return labels, present, text


def _scene(style: str, rng: np.random.Generator):
    if style == "cxr":
        return S._cxr_scene(rng), lambda x, y, s: True
    cells = rng.standard_normal((8, 8, 3)).astype(np.float32)
    if style == "fundus":
        cx, cy, rad = rng.uniform(0.48, 0.52, size=2).tolist() + [rng.uniform(0.44, 0.47)]
        side = rng.choice([-1.0, 1.0])
        scene = {
            "cx": cx, "cy": cy, "rad": rad, "cells": cells,
            "disc": (cx + side * rad * 0.55, cy + rng.uniform(-0.04, 0.04)),
            "vessel_angles": rng.uniform(0, 2 * np.pi, size=5),
        }  # fmt: skip
        fits = lambda x, y, s: np.hypot(x + s / 2 - cx, y + s / 2 - cy) + s * 0.71 < rad  # noqa: E731
        return scene, fits
    rad = rng.uniform(0.34, 0.4)
    scene = {
        "cx": rng.uniform(0.47, 0.53), "cy": rng.uniform(0.47, 0.53), "rad": rad, "cells": cells,
        "phase": rng.uniform(0, 2 * np.pi, size=2), "blob": S._ISIC_BLOB[rng.integers(3)],
    }  # fmt: skip
    fits = lambda x, y, s: np.hypot(x + s / 2 - scene["cx"], y + s / 2 - scene["cy"]) < rad  # noqa: E731
    return scene, fits


def render(like: str, seed: int, index: int, size: int, distractor_p: float) -> np.ndarray:
    """uint8 size x size x 3 image of sample ``index`` (primitives 24-32 % of the side)."""
    spec = LIKES[like]
    _, present, _ = sample(like, seed, index, distractor_p)
    rng = np.random.default_rng([int(seed), S._like_key("prim-" + like), int(index), 1])
    scene, fits = _scene(spec.style, rng)
    img = S._BACKGROUNDS[spec.style](scene, size).astype(np.float32)
    sides = [float(rng.uniform(0.24, 0.32)) for _ in present]
    for p, (x, y), side in zip(present, S._place(rng, sides, fits, []), sides, strict=True):
        x0, y0 = int(round(x * size)), int(round(y * size))
        s = min(max(int(round(side * size)), 3), size - x0, size - y0)
        m = S.pattern_mask(p.pattern, s, s)[..., None] * rng.uniform(0.75, 0.9)
        patch = img[y0 : y0 + s, x0 : x0 + s]
        img[y0 : y0 + s, x0 : x0 + s] = patch * (1 - m) + m * np.asarray(p.color, np.float32)
    img = img + rng.normal(0.0, 0.025, size=(size, size, 1 if spec.style == "cxr" else 3))
    out = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(out[..., :1], 3, axis=2) if spec.style == "cxr" else out


def _params(cfg) -> dict:
    get = lambda k: cfg.get(k, DEFAULTS.get(k))  # noqa: E731
    like = str(get("like"))
    if like not in LIKES:
        raise ValueError(f"data.like={like!r} unknown for primitives; choose from {sorted(LIKES)}")
    out = {"like": like, "seed": int(get("seed") or 0), "image_size": int(get("image_size"))}
    out["distractor_p"] = float(get("distractor_p"))
    for s in class2images.SPLITS:
        out[f"num_{s}"] = int(get(f"num_{s}"))
        if out[f"num_{s}"] <= 0:
            raise ValueError(f"data.num_{s} must be > 0 for primitives data, got {out[f'num_{s}']}")
    return out


def write_dataset(params: dict, root: str) -> None:
    """Renders the dataset described by ``params`` into ``root`` (atomically: temp dir + rename)."""
    like, seed, size, dp = (
        params["like"],
        params["seed"],
        params["image_size"],
        params["distractor_p"],
    )
    spec = LIKES[like]
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".primitives-", dir=parent)
    os.makedirs(os.path.join(tmp, "images"))
    reports, present_of, start = {}, {}, 0
    for split in class2images.SPLITS:
        table: dict[str, list[str]] = {}
        for j in range(params[f"num_{split}"]):
            i = start + j
            labels, present, text = sample(like, seed, i, dp)
            rel = f"{split}_{i:06d}.png"
            img = render(like, seed, i, size, dp)
            cv2.imwrite(os.path.join(tmp, "images", rel), img[..., ::-1])
            if spec.multilabel:
                key = "".join(str(int(v)) for v in labels)
            else:
                key = spec.class_names[int(labels.argmax())]
            table.setdefault(key, []).append(rel)
            reports[rel] = text
            present_of[rel] = [p.name for p in present]
        class2images.write_split_pickle(os.path.join(tmp, f"class2images_{split}.p"), table)
        start += params[f"num_{split}"]
    names = [p.name for p in spec.relevant + spec.distractors]
    with open(os.path.join(tmp, "reports.json"), "w") as f:
        json.dump(reports, f)
    with open(os.path.join(tmp, "concepts.json"), "w") as f:
        json.dump(
            {"names": names, "relevant": names[: len(spec.relevant)], "present": present_of}, f
        )
    with open(os.path.join(tmp, "params.json"), "w") as f:
        json.dump(params, f, sort_keys=True)
    if os.path.isdir(root):  # another process finished first
        shutil.rmtree(tmp)
        return
    os.rename(tmp, root)


def dataset_root(cfg) -> str:
    """``data.root`` or ``<cache_dir>/primitives-<hash of the generation parameters>``."""
    if cfg.get("root", ""):
        return str(cfg.root)
    params = _params(cfg)
    cache = cfg.get("cache_dir", "") or os.environ.get(
        "JAXPROTO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxproto")
    )
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache, f"primitives-{params['like']}-{digest}")


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Generates the dataset on first use, then reads it through ``class2images``."""
    params = _params(cfg)
    root = dataset_root(cfg)
    if not os.path.isfile(os.path.join(root, "params.json")):
        log.info("rendering primitives dataset %s into %s", params, root)
        write_dataset(params, root)
    spec = LIKES[params["like"]]
    inner = ml_collections.ConfigDict(
        {
            "name": "primitives",
            "root": root,
            "class_names": list(spec.class_names),
            "multilabel_keys": spec.multilabel,
            "reports_file": "reports.json",
            "concepts_file": "concepts.json",
            "on_bad_sample": cfg.get("on_bad_sample", "error"),
        }
    )
    return class2images.load(inner, report, name=f"primitives-{params['like']}")

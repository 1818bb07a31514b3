"""Synthetic concept-rule datasets for Med-MICN: every concept is a planted visual primitive
and the class is a known logical function of the concepts, so learned rules can be checked.

Each look-alike copies a real dataset's class and concept names: ``ddi_concepts`` (DDI's 13
SkinCon concepts; malignant ⇔ Papule ∧ ¬Xerosis), ``fitzpatrick_concepts`` (the same 13;
malignant ⇔ Vesicle ∧ ¬Fissure), ``covidct_concepts`` (Table 3's 8 COVID-CT concepts;
CT_COVID ⇔ Peripheral ground-glass opacities ∧ ¬Absence of lobar consolidation) and
``kermany_concepts`` (6 chest X-ray findings; PNEUMONIA ⇔ Consolidation ∧ ¬Clear lung fields).
Concepts are drawn independently; concept k is pattern ``PATTERNS[k]`` in its own colour,
placed in its own cell of a jittered 4x4 grid (no overlaps), on ``jaxproto.data.synthetic``'s
skin or CXR background. ``jaxproto.data.synthetic`` renders them (it dispatches these ``like``
names here), so records are ``synthetic://<like>/<seed>/<index>?size=<n>`` paths.

CLI: ``python -m jaxproto.data.synthetic_concepts --like ddi_concepts --num 800 --out DIR``
writes the real on-disk layout (DDI + ``ddi_metadata_concept.csv``; COVID-CT folders + split
lists + concept CSV; Kermany folders + concept CSV; Fitzpatrick17k CSV + SkinCon table).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

import numpy as np

from jaxproto.data import covidct, ddi, fitzpatrick, kermany, synthetic, write_real_format
from jaxproto.data.records import DatasetIndex, multi_hot

log = logging.getLogger(__name__)

_PATTERN_ORDER = [
    "disk", "ring", "plus", "xcross", "stripes0", "stripes90", "checker", "dots", "triangle",
    "frame", "target", "diamond", "lattice", "stripes45", "stripes135",
]  # fmt: skip
_COLORS = [
    (0.95, 0.95, 0.95), (0.05, 0.05, 0.05), (0.9, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.2, 0.9),
    (0.95, 0.85, 0.1), (0.7, 0.1, 0.8), (0.1, 0.8, 0.8), (1.0, 0.5, 0.0), (0.5, 0.3, 0.1),
    (1.0, 0.6, 0.8), (0.4, 0.4, 0.4), (0.0, 0.4, 0.3),
]  # fmt: skip
_GRID = 4


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """Class ``positive`` ⇔ all ``present`` concepts and none of ``absent``; else ``negative``."""

    positive: int
    present: tuple[int, ...]
    absent: tuple[int, ...]
    prior: tuple[float, ...]  # P(concept k present)

    def label(self, concepts: np.ndarray) -> int:
        c = np.asarray(concepts) > 0.5
        holds = all(c[k] for k in self.present) and not any(c[k] for k in self.absent)
        return self.positive if holds else 1 - self.positive

    def planted(self, concept_names: list[str]) -> dict[int, list[list[tuple[str, bool]]]]:
        """Class -> the true rule as a DNF (alternatives of (concept, positive) literals)."""
        conj = [(concept_names[k], True) for k in self.present]
        conj += [(concept_names[k], False) for k in self.absent]
        negation = [[(name, not pos)] for name, pos in conj]
        return {self.positive: [conj], 1 - self.positive: negation}


def _prior(n: int, rule_present: tuple[int, ...], rule_absent: tuple[int, ...]) -> tuple:
    p = [0.3] * n
    for k in rule_present:
        p[k] = 0.6
    for k in rule_absent:
        p[k] = 0.4
    return tuple(p)


def _make(classes, concepts, style, positive, present, absent):
    spec = synthetic.LikeSpec(list(classes), False, None, list(concepts), style)
    return spec, RuleSpec(positive, present, absent, _prior(len(concepts), present, absent))


_DDI_PAPULE, _DDI_XEROSIS = 1, 4
_DEFS = {
    "ddi_concepts": _make(
        ddi.CLASS_NAMES, ddi.CONCEPT_NAMES, "skin", 1, (_DDI_PAPULE,), (_DDI_XEROSIS,)
    ),
    "fitzpatrick_concepts": _make(
        fitzpatrick.CLASS_NAMES, ddi.CONCEPT_NAMES, "skin", 1, (0,), (3,)
    ),
    "covidct_concepts": _make(covidct.CLASS_NAMES, covidct.CONCEPT_NAMES, "cxr", 0, (0,), (4,)),
    "kermany_concepts": _make(kermany.CLASS_NAMES, kermany.CONCEPT_NAMES, "cxr", 1, (0,), (4,)),
}
LIKES: dict[str, synthetic.LikeSpec] = {name: spec for name, (spec, _) in _DEFS.items()}
RULES: dict[str, RuleSpec] = {name: rule for name, (_, rule) in _DEFS.items()}
# The real layout each look-alike writes, and the registry name that reads it back.
REAL_LAYOUT = {
    "ddi_concepts": "ddi",
    "fitzpatrick_concepts": "fitzpatrick17k",
    "covidct_concepts": "covidct",
    "kermany_concepts": "kermany",
}


def planted_rules(like: str) -> dict[str, list[list[tuple[str, bool]]]]:
    """Class name -> the true rule (DNF) of look-alike ``like``."""
    spec, rule = LIKES[like], RULES[like]
    return {spec.class_names[k]: v for k, v in rule.planted(spec.concept_names).items()}


def _skin_scene(rng: np.random.Generator) -> dict:
    rad = rng.uniform(0.3, 0.36)
    return {
        "cx": rng.uniform(0.47, 0.53), "cy": rng.uniform(0.47, 0.53), "rad": rad,
        "phase": rng.uniform(0, 2 * np.pi, size=2), "blob": (0.62, 0.42, 0.3),
        "cells": rng.standard_normal((8, 8, 3)).astype(np.float32),
    }  # fmt: skip


def layout(like: str, seed: int, index: int) -> synthetic.Layout:
    """Concepts (independent draws), the class from the rule, one lesion per present concept."""
    spec, rule = LIKES[like], RULES[like]
    n = len(spec.concept_names)
    if n > _GRID * _GRID:
        raise ValueError(f"{like}: {n} concepts do not fit a {_GRID}x{_GRID} grid")
    rng = np.random.default_rng([int(seed), synthetic.zlib.crc32(like.encode()), int(index), 0])
    concepts = (rng.random(n) < np.asarray(rule.prior)).astype(np.float32)
    labels = multi_hot([rule.label(concepts)], len(spec.class_names))
    cells = rng.permutation(_GRID * _GRID)
    cell = 1.0 / _GRID
    lesions = []
    for k in np.flatnonzero(concepts):
        side = float(rng.uniform(0.7, 0.9) * cell)
        row, col = divmod(int(cells[k]), _GRID)
        x = col * cell + float(rng.uniform(0, cell - side))
        y = row * cell + float(rng.uniform(0, cell - side))
        finding = synthetic.Finding(_PATTERN_ORDER[k], _COLORS[k % len(_COLORS)], 0.9)
        lesions.append(synthetic.Lesion(finding, int(k), True, x, y, side))
    scene = _skin_scene(rng) if spec.style == "skin" else synthetic._cxr_scene(rng)
    return synthetic.Layout(labels, concepts, tuple(lesions), scene)


# --------------------------------------------------------------------------- real layouts


def _rows(index: DatasetIndex):
    for split in ("train", "val", "test"):
        for r in index.splits.get(split, []):
            yield split, r


def _concept_csv(path: str, key: str, names: list[str], rows: list) -> None:
    write_real_format._csv(path, [key, *names], rows)


def _write_covidct(index: DatasetIndex, images, out: str) -> None:
    lists: dict[tuple[str, str], list[str]] = {}
    concept_rows = []
    for split, r in _rows(index):
        cls = covidct.CLASS_NAMES[int(np.argmax(r.labels))]
        write_real_format._save(images(r), os.path.join(out, "Images-processed", cls, r.image_id))
        lists.setdefault((split, cls), []).append(r.image_id)
        concept_rows.append([r.image_id, *[int(c) for c in r.concepts]])
    for split in ("train", "val", "test"):
        for cls in covidct.CLASS_NAMES:
            path = os.path.join(out, "Data-split", covidct.SPLIT_FOLDERS[cls], f"{split}{cls}.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.writelines(f"{name}\n" for name in lists.get((split, cls), []))
    _concept_csv(
        os.path.join(out, "covidct_concepts.csv"), "image", index.concept_names, concept_rows
    )


def _write_kermany(index: DatasetIndex, images, out: str) -> None:
    concept_rows = []
    for split, r in _rows(index):
        folder = "train" if split == "train" else split
        cls = kermany.CLASS_NAMES[int(np.argmax(r.labels))]
        rel = f"{folder}/{cls}/{os.path.splitext(r.image_id)[0]}.jpeg"
        write_real_format._save(images(r), os.path.join(out, "chest_xray", rel), quality=95)
        concept_rows.append([rel, *[int(c) for c in r.concepts]])
    _concept_csv(
        os.path.join(out, "chest_xray", "kermany_concepts.csv"),
        "image",
        index.concept_names,
        concept_rows,
    )


def _write_fitzpatrick(index: DatasetIndex, images, out: str) -> None:
    rows, concept_rows = [], []
    for k, (_, r) in enumerate(_rows(index)):
        md5 = f"{k:032x}"
        write_real_format._save(images(r), os.path.join(out, "images", f"{md5}.jpg"), quality=95)
        part = "malignant" if int(np.argmax(r.labels)) == 1 else ("benign", "non-neoplastic")[k % 2]
        rows.append([md5, 3, -1, "synthetic lesion", "benign dermal", part, "1 Diagnostic", ""])
        concept_rows.append([f"{md5}.jpg", *[int(c) for c in r.concepts], 0])
    write_real_format._csv(
        os.path.join(out, "fitzpatrick17k.csv"),
        ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
         "three_partition_label", "qc", "url"],
        rows,
    )  # fmt: skip
    _concept_csv(
        os.path.join(out, "annotations_fitzpatrick17k.csv"),
        "ImageID",
        [*index.concept_names, "Do not consider this image"],
        concept_rows,
    )


_WRITERS = {"covidct": _write_covidct, "kermany": _write_kermany}
_WRITERS["fitzpatrick17k"] = _write_fitzpatrick


def write_layout(like: str, index: DatasetIndex, out: str) -> str:
    """Writes ``index`` in the real layout of ``like``; returns the registry dataset name."""
    real = REAL_LAYOUT[like]
    images = lambda r: synthetic.render_path(r.path)  # noqa: E731
    if real in _WRITERS:
        os.makedirs(out, exist_ok=True)
        _WRITERS[real](index, images, out)
    else:
        write_real_format.write(real, index, images, out)
    return real


def main(argv: list[str] | None = None) -> None:
    """Writes a synthetic concept dataset in the real dataset's published layout."""
    ap = argparse.ArgumentParser(
        prog="python -m jaxproto.data.synthetic_concepts",
        description="Render a synthetic concept-rule dataset in a real dataset's layout.",
    )
    ap.add_argument("--like", required=True, choices=sorted(LIKES))
    ap.add_argument("--num", type=int, required=True, help="training images")
    ap.add_argument("--num-test", type=int, default=None, help="test images (default num/4)")
    ap.add_argument("--num-val", type=int, default=0, help="validation images (COVID-CT lists)")
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--image-size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.num <= 0:
        ap.error("--num must be > 0")
    cfg = {
        "like": args.like, "num_train": args.num, "num_val": args.num_val,
        "num_test": args.num_test if args.num_test is not None else max(1, args.num // 4),
        "image_size": args.image_size, "seed": args.seed,
    }  # fmt: skip
    real = write_layout(args.like, synthetic.synthetic_index(cfg), args.out)
    log.info("wrote synthetic %s in the %s layout to %s", args.like, real, args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()

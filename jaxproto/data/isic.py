"""ISIC 2017 dermoscopy, Part 3 classification with optional Part 2 concepts (data_formats.md §4).

Files under ``data.root``: ``ISIC-2017_{Training,Validation,Test_v2}_Data/`` (JPEGs, plus
``*_superpixels.png`` and a metadata CSV that are not images) and
``ISIC-2017_{...}_Part3_GroundTruth.csv`` (``image_id,melanoma,seborrheic_keratosis``, floats).
Class = melanoma if melanoma == 1, seborrheic keratosis if seborrheic_keratosis == 1, else nevus;
both set is an error. Splits ``train``, ``val``, ``test``.

Data-config fields (defaults in ``DEFAULTS``):
  isic_test_csv: test ground-truth file; X-MIR uses the balanced 270-image
    ``ISIC-2017_Test_v2_Part3_GroundTruth_balanced.csv`` (same columns).
  isic_concepts: read CSR's 4 Part-2 dermoscopic features from
    ``ISIC-2017_<split>_Part2_GroundTruth/<image_id>_features.json`` (image positive iff any
    superpixel flag is 1; csr.md §7).
Class order (X-MIR): nevus 0, seborrheic keratosis 1, melanoma 2.
"""

from __future__ import annotations

import json
import logging
import os

import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

log = logging.getLogger(__name__)

CLASS_NAMES = ["nevus", "seborrheic_keratosis", "melanoma"]
CONCEPT_NAMES = ["milia_like_cyst", "pigment_network", "negative_network", "streaks"]
SPLIT_DIRS = {"train": "Training", "val": "Validation", "test": "Test_v2"}

DEFAULTS: dict = {
    "isic_test_csv": "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
    "isic_concepts": False,
}


def _flag(value: str, where: str, column: str, report: BadSampleReport) -> float | None:
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if v not in (0.0, 1.0):
        report.bad(where, f"{column}={value!r}", "0 or 1 (0.0 / 1.0)")
        return None
    return v


def read_concepts(path: str, report: BadSampleReport) -> np.ndarray | None:
    """Image-level concept vector from one Part-2 features JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        report.bad(
            path,
            f"cannot read features JSON ({type(e).__name__}: {e})",
            f"a JSON object with lists {CONCEPT_NAMES}",
        )
        return None
    missing = [c for c in CONCEPT_NAMES if c not in data]
    if missing:
        report.bad(
            path, f"missing feature(s) {missing}; found {sorted(data)}", f"keys {CONCEPT_NAMES}"
        )
        return None
    return np.array([float(any(int(v) == 1 for v in data[c])) for c in CONCEPT_NAMES], np.float32)


def read_split(
    root: str, split: str, csv_name: str, concepts: bool, report: BadSampleReport
) -> list[Record]:
    tag = SPLIT_DIRS[split]
    image_dir = os.path.join(root, f"ISIC-2017_{tag}_Data")
    csv_path = loading.require_file(os.path.join(root, csv_name), f"ISIC 2017 {split} ground truth")
    if not os.path.isdir(image_dir):
        raise DataError(f"{image_dir}: ISIC 2017 image folder not found")
    files = loading.list_images(
        image_dir, (".jpg", ".jpeg", ".png"), skip_suffixes=("_superpixels", "_segmentation")
    )
    by_stem = {os.path.splitext(n)[0]: p for n, p in files.items()}
    records, seen = [], set()
    for line, row in loading.read_csv_rows(
        csv_path, ["image_id", "melanoma", "seborrheic_keratosis"]
    ):
        where = f"{csv_path}:{line}"
        image_id = row["image_id"]
        if not loading.first_sighting(seen, image_id, where, report):
            continue
        mel = _flag(row["melanoma"], where, "melanoma", report)
        sk = _flag(row["seborrheic_keratosis"], where, "seborrheic_keratosis", report)
        if mel is None or sk is None:
            continue
        if mel == 1.0 and sk == 1.0:
            report.bad(where, "both melanoma and seborrheic_keratosis are 1", "at most one")
            continue
        cls = 2 if mel == 1.0 else 1 if sk == 1.0 else 0
        if image_id not in by_stem:
            report.bad(
                where, f"image {image_id}.jpg not found in {image_dir}", "an existing image file"
            )
            continue
        concept_vec = None
        if concepts:
            feat = os.path.join(
                root, f"ISIC-2017_{tag}_Part2_GroundTruth", f"{image_id}_features.json"
            )
            if not os.path.isfile(feat):
                report.bad(where, f"features file {feat} not found", "a Part-2 JSON per image")
                continue
            concept_vec = read_concepts(feat, report)
            if concept_vec is None:
                continue
        records.append(
            Record(
                image_id=image_id,
                path=by_stem[image_id],
                labels=multi_hot([cls], len(CLASS_NAMES)),
                concepts=concept_vec,
                meta={"where": where},
            )
        )
    unlabelled = len(set(by_stem) - seen)
    if unlabelled:
        log.info("%d images in %s have no row in %s (not used)", unlabelled, image_dir, csv_path)
    return records


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads ISIC 2017 from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    concepts = bool(opt("isic_concepts"))
    splits = {}
    for split, tag in SPLIT_DIRS.items():
        name = opt("isic_test_csv") if split == "test" else f"ISIC-2017_{tag}_Part3_GroundTruth.csv"
        if split == "val" and not os.path.isfile(os.path.join(root, name)):
            log.info("%s not found: no val split", name)
            continue
        splits[split] = read_split(root, split, name, concepts, report)
    index = DatasetIndex(
        name="isic2017",
        class_names=list(CLASS_NAMES),
        splits=splits,
        multilabel=False,
        concept_names=list(CONCEPT_NAMES) if concepts else [],
    )
    return loading.finish(index, cfg, DEFAULTS)

"""HAM10000 dermoscopy, 7 classes in CFN's order (data_formats.md §8, cfn.md).

Files under ``data.root``: ``HAM10000_metadata.csv`` (``lesion_id, image_id, dx, dx_type, age,
sex, localization``) and ``<image_id>.jpg`` anywhere below the root (``HAM10000_images_part_1``,
``HAM10000_images_part_2`` or ``images/``).

No official split: train/val/test are stratified by class with ``data.ham_fractions``
(train, val; test takes the rest; default 80/10/10 as CFN's counts suggest). ``data.ham_split_by``:
"lesion" (default: images of one lesion stay in one split; ``patient_id`` = lesion_id) or "image"
(CFN's apparent per-image split, which leaks lesions across splits).
"""

from __future__ import annotations

import os

import ml_collections

from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

DX_CODES = ["akiec", "bcc", "bkl", "df", "nv", "mel", "vasc"]
CLASS_NAMES = [
    "actinic keratoses", "basal cell carcinoma", "benign keratosis-like lesions",
    "dermatofibroma", "melanocytic nevi", "melanoma", "vascular lesions",
]  # fmt: skip
COLUMNS = ["lesion_id", "image_id", "dx"]

DEFAULTS: dict = {
    "ham_metadata_csv": "HAM10000_metadata.csv",
    "ham_split_by": "lesion",
    "ham_fractions": [0.8, 0.1],
}


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads HAM10000 from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    split_by = opt("ham_split_by")
    if split_by not in ("lesion", "image"):
        raise ValueError(f"data.ham_split_by must be 'lesion' or 'image', got {split_by!r}")
    if float(opt("val_fraction")) > 0:
        raise ValueError(
            "HAM10000 already has a val split from data.ham_fractions; set data.val_fraction=0"
        )
    meta_path = loading.require_file(
        os.path.join(root, opt("ham_metadata_csv")), "HAM10000 metadata"
    )
    files = loading.list_images(root, (".jpg",))
    records, seen, lesion_dx = [], set(), {}
    for line, row in loading.read_csv_rows(meta_path, COLUMNS):
        where = f"{meta_path}:{line}"
        image_id, lesion, dx = row["image_id"], row["lesion_id"], row["dx"]
        if dx not in DX_CODES:
            report.bad(where, f"unknown dx {dx!r}", f"one of {DX_CODES}")
            continue
        if image_id in seen:
            report.bad(where, f"duplicate image id {image_id!r}", "each image once")
            continue
        if lesion_dx.setdefault(lesion, dx) != dx:
            report.bad(
                where,
                f"lesion {lesion!r} has dx {dx!r} here and {lesion_dx[lesion]!r} in an earlier row",
                "one diagnosis per lesion",
            )
            continue
        seen.add(image_id)
        if f"{image_id}.jpg" not in files:
            report.bad(
                where, f"image {image_id}.jpg not found under {root}", "an existing image file"
            )
            continue
        meta = {k: row.get(k, "") for k in ("dx_type", "age", "sex", "localization")}
        records.append(
            Record(
                image_id=image_id,
                path=files[f"{image_id}.jpg"],
                labels=multi_hot([DX_CODES.index(dx)], len(DX_CODES)),
                patient_id=lesion,
                meta={**meta, "where": where},
            )
        )
    groups = [r.patient_id if split_by == "lesion" else r.image_id for r in records]
    strata = [int(r.labels.argmax()) for r in records]
    parts = loading.grouped_split(groups, list(opt("ham_fractions")), int(opt("seed")), strata)
    splits = {
        name: [records[i] for i in idx]
        for name, idx in zip(("train", "val", "test"), parts, strict=True)
    }
    index = DatasetIndex(
        name="ham10000", class_names=list(CLASS_NAMES), splits=splits, multilabel=False
    )
    return loading.finish(index, cfg, {**DEFAULTS, "val_fraction": 0.0})

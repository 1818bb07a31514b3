"""MIMIC-CXR in R2Gen's cleaned-report layout with 13 CheXpert labels (cfn.md §9).

Files under ``data.root`` (R2Gen's ``data/mimic_cxr/``):

- ``annotation.json`` (``data.mimic_annotation``): ``{"train" | "val" | "test": [{"id",
  "study_id", "subject_id", "report", "image_path": [relative paths], "split"}, ...]}``; one
  entry per image (R2Gen's split: 270,790 / 2,130 / 3,858), ``report`` the cleaned report;
- images under ``images/`` (``data.images_dir``) at ``image_path[0]`` (``p10/p10000032/
  s50414267/<dicom id>.jpg``), as R2Gen reads them;
- MIMIC-CXR-JPG's study labels ``mimic-cxr-2.0.0-chexpert.csv.gz`` (``data.mimic_labels``; plain
  ``.csv`` too): ``subject_id, study_id`` and the 14 CheXpert columns with 1.0 (positive), 0.0
  (negative), -1.0 (uncertain) or blank (not mentioned).

The 13 labels are the CheXpert columns without ``No Finding``, in the file's alphabetical order
(CFN keeps them as 13-character 0/1 keys whose order is undocumented; its per-label positive
counts fit this order [inferred]). Positive = 1.0; uncertain -1.0 counts as negative
(``data.mimic_uncertain = "zeros"``, U-Zeros, default) or positive (``"ones"``); blank is
negative. Each record's report (``meta["report"]``) feeds CFN's report-based naming;
``patient_id`` is the subject, so carved splits stay patient-disjoint.

Bad input: an unreadable annotation (the file and JSON line), a missing split, an entry
without its fields (``annotation.json[split][i]``), a label cell outside the four values (the
CSV file and line) or a study without labels.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record

CHEXPERT_COLUMNS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
]  # fmt: skip
CLASS_NAMES = [c for c in CHEXPERT_COLUMNS if c != "No Finding"]
SPLITS = ("train", "val", "test")
ENTRY_FIELDS = ("id", "study_id", "subject_id", "report", "image_path")

DEFAULTS: dict = {
    "mimic_annotation": "annotation.json",
    "mimic_labels": "mimic-cxr-2.0.0-chexpert.csv.gz",
    "mimic_uncertain": "zeros",
    "images_dir": "images",
}

_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": 0.0}


def read_annotation(path: str) -> dict:
    """R2Gen's annotation dict; DataError naming the file (and JSON line) otherwise."""
    loading.require_file(path, "R2Gen MIMIC-CXR annotation")
    try:
        with open(path, encoding="utf-8") as f:
            ann = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(ann, dict):
        raise DataError(f"{path}: expected an object with {list(SPLITS)} lists")
    missing = [s for s in SPLITS if not isinstance(ann.get(s), list)]
    if missing:
        raise DataError(f"{path}: no list for split(s) {missing} (found keys {sorted(ann)})")
    return ann


def read_labels(path: str, uncertain: float) -> dict[tuple[str, str], np.ndarray]:
    """(subject_id, study_id) -> the 13 labels; DataError naming the file and line."""
    loading.require_file(path, "MIMIC-CXR-JPG CheXpert label table")
    out = {}
    for line, row in loading.read_csv_rows(path, ["subject_id", "study_id", *CHEXPERT_COLUMNS]):
        values = []
        for name in CLASS_NAMES:
            cell = row[name]
            if cell not in _VALUES:
                raise DataError(
                    f"{path}:{line}: column {name!r} is {cell!r}, expected 1.0, 0.0, -1.0 or blank"
                )
            v = _VALUES[cell]
            values.append(uncertain if v < 0 else v)
        out[(_id(row["subject_id"]), _id(row["study_id"]))] = np.asarray(values, np.float32)
    return out


def _id(value) -> str:
    """Ids as R2Gen (ints) and the CSV (text, sometimes ``s``/``p``-prefixed) write them."""
    text = str(value).strip()
    return text[1:] if text[:1] in ("p", "s") and text[1:].isdigit() else text


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads the R2Gen MIMIC-CXR split under ``cfg.root``; see the module docstring."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    policy = opt("mimic_uncertain")
    if policy not in ("zeros", "ones"):
        raise ValueError(f"data.mimic_uncertain must be 'zeros' or 'ones', got {policy!r}")
    ann_path = os.path.join(root, opt("mimic_annotation"))
    ann = read_annotation(ann_path)
    labels = read_labels(os.path.join(root, opt("mimic_labels")), 1.0 if policy == "ones" else 0.0)
    images = os.path.join(root, opt("images_dir"))
    splits: dict[str, list[Record]] = {}
    for split in SPLITS:
        records = []
        for i, entry in enumerate(ann[split]):
            where = f"{ann_path}[{split!r}][{i}]"
            missing = [k for k in ENTRY_FIELDS if not isinstance(entry, dict) or k not in entry]
            if missing:
                report.bad(where, f"entry lacks {missing}", f"the fields {list(ENTRY_FIELDS)}")
                continue
            paths = entry["image_path"]
            if not isinstance(paths, list) or not paths or not isinstance(paths[0], str):
                report.bad(where, f"image_path is {paths!r}", "a non-empty list of paths")
                continue
            key = (_id(entry["subject_id"]), _id(entry["study_id"]))
            if key not in labels:
                report.bad(
                    where,
                    f"study {key[1]} of subject {key[0]} has no row in {opt('mimic_labels')}",
                    "CheXpert labels for every study",
                )
                continue
            records.append(
                Record(
                    image_id=str(entry["id"]),
                    path=os.path.join(images, paths[0]),
                    labels=labels[key],
                    patient_id=key[0],
                    meta={"where": where, "report": str(entry["report"]), "study_id": key[1]},
                )
            )
        splits[split] = loading.check_files(
            loading.check_duplicates(records, ann_path, report), report
        )
    index = DatasetIndex(
        name="mimic_cxr", class_names=list(CLASS_NAMES), splits=splits, multilabel=True
    )
    return loading.finish(index, cfg, {**DEFAULTS, "val_fraction": 0.0})

"""VinDr-CXR chest X-rays (DICOM) with radiologists' boxes (data_formats.md §6, csr.md §7).

Layouts (``data.vindr_format``):
  "kaggle" (VinBigData): ``train.csv`` (``image_id,class_name,class_id,rad_id,x_min,y_min,
    x_max,y_max``; one row per reader finding, ``No finding`` rows have empty box fields) and
    ``train/<image_id>.dicom``. Classes are the 15 class ids (14 local findings, 14 = No finding =
    background); the 14 findings are also the image's concepts (CSR). Kaggle's test set is
    unlabelled, so ``test`` is carved from train with ``data.test_fraction``.
  "physionet" (vindr-cxr 1.0.0): ``annotations/image_labels_{train,test}.csv`` (``image_id``,
    ``rad_id``/``rad_ID``, one 0/1 column per label; the test file's ``Other disease`` is renamed
    ``Other diseases``) and ``annotations/annotations_{train,test}.csv`` (boxes), images
    ``{train,test}/<image_id>.dicom``. Classes are the label columns; No finding = background.

Reader aggregation (``data.vindr_label_agg``): "any" (a label is positive if any reader marks it,
default) or "majority" (at least half of the image's readers). No finding is set exactly when no
other label is positive. Boxes (x_min..y_max -> x, y, w, h in DICOM pixels) of every reader are
kept for the positive labels.
"""

from __future__ import annotations

import csv
import os

import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, Box, DatasetIndex, Record

KAGGLE_CLASSES = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding",
]  # fmt: skip
NO_FINDING = "No finding"
KAGGLE_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max",
                  "y_max"]  # fmt: skip
BOX_COLUMNS = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
COLUMN_RENAMES = {"Other disease": "Other diseases", "rad_ID": "rad_id"}

DEFAULTS: dict = {
    "vindr_format": "kaggle",
    "vindr_label_agg": "any",
    "test_fraction": 0.2,
}


def _box(row: dict, where: str, report: BadSampleReport, label: int) -> Box | None | bool:
    """A Box, False for a row without coordinates, None (reported) for a bad one."""
    coords = [row[k] for k in ("x_min", "y_min", "x_max", "y_max")]
    if not any(coords):
        return False
    try:
        x0, y0, x1, y1 = map(float, coords)
    except ValueError:
        report.bad(where, f"box {coords}", "numeric x_min, y_min, x_max, y_max")
        return None
    if x1 <= x0 or y1 <= y0:
        report.bad(where, f"box {coords} has x_max <= x_min or y_max <= y_min", "a non-empty box")
        return None
    return Box(label, x0, y0, x1 - x0, y1 - y0)


def _aggregate(
    votes: dict[int, set[str]], readers: set[str], num: int, nf: int, agg: str
) -> np.ndarray:
    labels = np.zeros((num,), np.float32)
    need = 1 if agg == "any" else max(1, (len(readers) + 1) // 2)
    for c, who in votes.items():
        if c != nf and len(who) >= need:
            labels[c] = 1.0
    labels[nf] = float(not labels.any())
    return labels


def _records(image_ids, votes, readers, boxes, wheres, image_dir, classes, agg) -> list[Record]:
    nf = classes.index(NO_FINDING)
    out = []
    for image_id in image_ids:
        labels = _aggregate(votes[image_id], readers[image_id], len(classes), nf, agg)
        kept = tuple(b for b in boxes.get(image_id, ()) if labels[b.label])
        out.append(
            Record(
                image_id=image_id,
                path=os.path.join(image_dir, f"{image_id}.dicom"),
                labels=labels,
                boxes=kept,
                patient_id="",
                meta={"where": wheres[image_id], "readers": sorted(readers[image_id])},
            )
        )
    return out


def read_kaggle(path: str, image_dir: str, agg: str, report: BadSampleReport) -> list[Record]:
    """Records from VinBigData ``train.csv`` (one row per reader finding)."""
    votes: dict[str, dict[int, set[str]]] = {}
    readers: dict[str, set[str]] = {}
    boxes: dict[str, list[Box]] = {}
    wheres: dict[str, str] = {}
    seen_rows: set[tuple] = set()
    for line, row in loading.read_csv_rows(path, KAGGLE_COLUMNS):
        where = f"{path}:{line}"
        name = row["class_name"]
        if name not in KAGGLE_CLASSES:
            report.bad(where, f"unknown class_name {name!r}", f"one of {KAGGLE_CLASSES}")
            continue
        label = KAGGLE_CLASSES.index(name)
        if row["class_id"] != str(label):
            report.bad(where, f"class_id {row['class_id']!r} for {name!r}", f"class_id {label}")
            continue
        key = tuple(row.values())
        if key in seen_rows:
            report.bad(where, "duplicate row", "each reader finding once")
            continue
        seen_rows.add(key)
        box = _box(row, where, report, label)
        if box is None:
            continue
        if (box is False) != (label == KAGGLE_CLASSES.index(NO_FINDING)):
            report.bad(
                where,
                f"{name!r} {'without' if box is False else 'with'} a box",
                "boxes on findings, empty box fields on 'No finding'",
            )
            continue
        image_id = row["image_id"]
        wheres.setdefault(image_id, where)
        votes.setdefault(image_id, {}).setdefault(label, set()).add(row["rad_id"])
        readers.setdefault(image_id, set()).add(row["rad_id"])
        if box:
            boxes.setdefault(image_id, []).append(box)
    return _records(list(votes), votes, readers, boxes, wheres, image_dir, KAGGLE_CLASSES, agg)


def _label_table(path: str, report: BadSampleReport):
    with loading.open_text(path) as f:
        header = [COLUMN_RENAMES.get(h.strip(), h.strip()) for h in next(csv.reader(f), [])]
    loading.check_header(path, header, ["image_id", "rad_id", NO_FINDING])
    classes = [h for h in header if h not in ("image_id", "rad_id")]
    votes: dict[str, dict[int, set[str]]] = {}
    readers: dict[str, set[str]] = {}
    wheres: dict[str, str] = {}
    rows = loading.read_csv_rows(
        path,
        ["image_id"],
        aliases={
            c: [o for o, n in COLUMN_RENAMES.items() if n == c]
            for c in set(COLUMN_RENAMES.values())
        },
    )
    for line, row in rows:
        where = f"{path}:{line}"
        bad = [c for c in classes if row[c] not in ("0", "1", "0.0", "1.0")]
        if bad:
            report.bad(where, f"non-0/1 values in {bad}", "0 or 1 per label column")
            continue
        image_id, rad = row["image_id"], row["rad_id"] or "consensus"
        if rad in readers.get(image_id, set()):
            report.bad(
                where,
                f"duplicate row for image {image_id!r}, reader {rad!r}",
                "one row per image and reader",
            )
            continue
        wheres.setdefault(image_id, where)
        readers.setdefault(image_id, set()).add(rad)
        for c, name in enumerate(classes):
            if float(row[name]) == 1.0:
                votes.setdefault(image_id, {}).setdefault(c, set()).add(rad)
        votes.setdefault(image_id, {})
    return classes, votes, readers, wheres


def _physionet_boxes(path: str, classes: list[str], report: BadSampleReport):
    boxes: dict[str, list[Box]] = {}
    for line, row in loading.read_csv_rows(path, BOX_COLUMNS, aliases={"rad_id": ["rad_ID"]}):
        where = f"{path}:{line}"
        if row["class_name"] not in classes:
            report.bad(where, f"unknown class_name {row['class_name']!r}", f"one of {classes}")
            continue
        box = _box(row, where, report, classes.index(row["class_name"]))
        if box:
            boxes.setdefault(row["image_id"], []).append(box)
    return boxes


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads VinDr-CXR from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    fmt, agg = opt("vindr_format"), opt("vindr_label_agg")
    if agg not in ("any", "majority"):
        raise ValueError(f"data.vindr_label_agg must be 'any' or 'majority', got {agg!r}")
    if fmt == "kaggle":
        path = loading.require_file(os.path.join(root, "train.csv"), "VinBigData train.csv")
        records = loading.check_files(
            read_kaggle(path, os.path.join(root, "train"), agg, report), report
        )
        for r in records:
            r.concepts = r.labels[: len(KAGGLE_CLASSES) - 1].copy()
        index = DatasetIndex(
            name="vindr",
            class_names=list(KAGGLE_CLASSES),
            splits={"train": records},
            multilabel=True,
            background_class=KAGGLE_CLASSES.index(NO_FINDING),
            concept_names=KAGGLE_CLASSES[:-1],
        )
        loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    elif fmt == "physionet":
        splits, classes = {}, None
        for split in ("train", "test"):
            ann = os.path.join(root, "annotations")
            lpath = loading.require_file(
                os.path.join(ann, f"image_labels_{split}.csv"), "label table"
            )
            cls, votes, readers, wheres = _label_table(lpath, report)
            if classes is not None and cls != classes:
                raise DataError(
                    f"{lpath}: label columns {cls} differ from the train file's {classes}"
                )
            classes = cls
            bpath = loading.require_file(os.path.join(ann, f"annotations_{split}.csv"), "box table")
            boxes = _physionet_boxes(bpath, classes, report)
            records = _records(
                list(votes), votes, readers, boxes, wheres, os.path.join(root, split), classes, agg
            )
            splits[split] = loading.check_files(records, report)
        index = DatasetIndex(
            name="vindr",
            class_names=classes,
            splits=splits,
            multilabel=True,
            background_class=classes.index(NO_FINDING),
        )
    else:
        raise ValueError(f"data.vindr_format must be 'kaggle' or 'physionet', got {fmt!r}")
    return loading.finish(index, cfg, DEFAULTS)

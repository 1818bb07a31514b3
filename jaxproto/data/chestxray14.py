"""NIH ChestX-ray14 (data_formats.md §1; CIPL class order, cipl.md §5).

Files under ``data.root``: the per-image table (``Data_Entry_2017_v2020.csv``, else
``Data_Entry_2017.csv``; ``.gz`` also read), ``train_val_list.txt``, ``test_list.txt``, optional
``BBox_List_2017.csv``, and the PNGs anywhere below the root (flat, ``data/``, or the Kaggle
``images_0XX/images/`` folders).

Data-config fields (defaults in ``DEFAULTS``):
  entry_csv: table file name; "" tries the v2020 name, then the 2017 name.
  bbox_csv: box file name; "" = no boxes. A missing box file is an error unless "".
  train_list / test_list: official patient-disjoint split lists.
  include_no_finding: True (CIPL) appends "No Finding" as class 14 = background class;
    False gives the 14 disease classes and no background class.

Quirks handled: ``Patient Gender`` / ``Patient Sex`` header, the 2017 file's trailing empty column,
``Infiltrate`` in the box file (-> ``Infiltration``), the box file's empty trailing columns. Splits:
``train`` (train_val_list), ``test`` (test_list), ``val`` carved patient-wise from train when
``data.val_fraction > 0``. Boxes are in the 1024x1024 PNG's pixels.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping

import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, Box, DatasetIndex, Record

log = logging.getLogger(__name__)

DISEASES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]  # fmt: skip
NO_FINDING = "No Finding"
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")

DEFAULTS: dict = {
    "entry_csv": "",
    "bbox_csv": "BBox_List_2017.csv",
    "train_list": "train_val_list.txt",
    "test_list": "test_list.txt",
    "include_no_finding": True,
}


def class_names(include_no_finding: bool = True) -> list[str]:
    return DISEASES + [NO_FINDING] if include_no_finding else list(DISEASES)


def _find(root: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        if os.path.isfile(os.path.join(root, candidate)):
            return os.path.join(root, candidate)
    return None


def read_data_entry(
    path: str, classes: list[str], report: BadSampleReport
) -> dict[str, tuple[np.ndarray, str, dict, str]]:
    """Image name -> (multi-hot labels, patient id, metadata, "file:line") from the table."""
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, tuple[np.ndarray, str, dict, str]] = {}
    rows = loading.read_csv_rows(
        path,
        ["Image Index", "Finding Labels", "Patient ID"],
        aliases={"Patient Gender": ["Patient Sex"]},
    )
    for line, row in rows:
        where = f"{path}:{line}"
        name = row["Image Index"]
        if name in out:
            report.bad(where, f"duplicate image id {name!r}", "each image listed once")
            continue
        labels = np.zeros((len(classes),), np.float32)
        findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
        unknown = [f for f in findings if f not in index and f != NO_FINDING]
        if not findings or unknown:
            report.bad(
                where,
                f"Finding Labels {row['Finding Labels']!r} has unknown label(s) {unknown}",
                f"'|'-separated names from {DISEASES + [NO_FINDING]}",
            )
            continue
        for f in findings:
            if f in index:
                labels[index[f]] = 1.0
        meta = {
            k: row[k]
            for k in ("Follow-up #", "Patient Age", "Patient Gender", "View Position")
            if k in row
        }
        out[name] = (labels, row["Patient ID"], meta, where)
    return out


def read_bbox_list(path: str, report: BadSampleReport) -> dict[str, list[Box]]:
    """Image name -> disease boxes (x, y, w, h in the 1024-px PNG) from BBox_List_2017.csv.

    The header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` names 9 fields for 6 values; the
    rows are read positionally after checking the header's first two names.
    """
    index = {c: i for i, c in enumerate(DISEASES)}
    boxes: dict[str, list[Box]] = {}
    with loading.open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if (
            header[:2] != ["Image Index", "Finding Label"]
            or not header[2:3]
            or not header[2].startswith("Bbox")
        ):
            raise DataError(
                f"{path}: wrong header: expected 'Image Index,Finding Label,Bbox [x,y,w,h],,,'; "
                f"found columns {header}"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            values = [v.strip() for v in row]
            if not any(values):
                continue
            if len(values) < 6 or any(values[6:]):
                report.bad(
                    where,
                    f"{len(values)} fields {values}",
                    "image, label, x, y, w, h (and empty trailing fields)",
                )
                continue
            name, label = values[0], BOX_LABEL_ALIASES.get(values[1], values[1])
            if label not in index:
                report.bad(where, f"unknown box label {values[1]!r}", f"one of {DISEASES}")
                continue
            try:
                x, y, w, h = (float(v) for v in values[2:6])
            except ValueError:
                report.bad(where, f"non-numeric box {values[2:6]}", "float x, y, w, h")
                continue
            if w <= 0 or h <= 0:
                report.bad(where, f"box with non-positive size w={w}, h={h}", "w > 0 and h > 0")
                continue
            boxes.setdefault(name, []).append(Box(index[label], x, y, w, h))
    return boxes


def read_list(path: str, report: BadSampleReport) -> list[tuple[str, str]]:
    """(image name, "file:line") for each line of a split list."""
    out, seen = [], set()
    with loading.open_text(path) as f:
        for i, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            if not loading.first_sighting(seen, name, f"{path}:{i}", report):
                continue
            out.append((name, f"{path}:{i}"))
    return out


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads NIH ChestX-ray14 from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    include_nf = bool(opt("include_no_finding"))
    classes = class_names(include_nf)
    names = [opt("entry_csv")] if opt("entry_csv") else list(ENTRY_NAMES)
    entry_path = next((p for p in (_find(root, n) for n in names) if p), None)
    if entry_path is None:
        raise DataError(f"{root}: no per-image table found (looked for {names}, also .gz)")
    table = read_data_entry(entry_path, classes, report)
    boxes: dict[str, list[Box]] = {}
    if opt("bbox_csv"):
        bbox_path = _find(root, opt("bbox_csv"))
        if bbox_path is None:
            raise DataError(
                f"{os.path.join(root, opt('bbox_csv'))}: box file not found "
                "(set data.bbox_csv='' to read no boxes)"
            )
        boxes = read_bbox_list(bbox_path, report)
    for name in boxes:
        if name not in table:
            report.bad(
                opt("bbox_csv"),
                f"boxes for image {name!r} which is not in {entry_path}",
                "boxes only for listed images",
            )
    files = loading.list_images(root, (".png",))
    splits: dict[str, list[Record]] = {}
    assigned: dict[str, str] = {}
    for split, key in (("train", "train_list"), ("test", "test_list")):
        list_path = loading.require_file(os.path.join(root, opt(key)), f"split list data.{key}")
        records = []
        for name, where in read_list(list_path, report):
            if name in assigned:
                report.bad(
                    where,
                    f"image {name!r} is also in the {assigned[name]} list",
                    "train and test lists disjoint",
                )
                continue
            assigned[name] = split
            if name not in table:
                report.bad(where, f"image {name!r} is not in {entry_path}", "a listed image")
                continue
            if name not in files:
                report.bad(
                    where,
                    f"image file {name!r} not found under {root}",
                    "the PNG in root, root/data or root/images_0XX/images",
                )
                continue
            labels, patient, meta, entry_where = table[name]
            records.append(
                Record(
                    image_id=name,
                    path=files[name],
                    labels=labels,
                    boxes=tuple(boxes.get(name, ())),
                    patient_id=patient,
                    meta={**meta, "where": entry_where},
                )
            )
        splits[split] = records
    unlisted = len(set(table) - set(assigned))
    if unlisted:
        log.info("%d images of %s are in neither split list (not used)", unlisted, entry_path)
    index = DatasetIndex(
        name="chestxray14",
        class_names=classes,
        splits=splits,
        multilabel=True,
        background_class=classes.index(NO_FINDING) if include_nf else None,
    )
    return loading.finish(index, cfg, DEFAULTS)


def label_counts(table: Mapping[str, tuple], classes: list[str]) -> dict[str, int]:
    """Images per class in a ``read_data_entry`` result (for checks against published counts)."""
    total = np.sum([v[0] for v in table.values()], axis=0)
    return {c: int(n) for c, n in zip(classes, total, strict=True)}

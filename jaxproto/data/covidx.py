"""COVIDx chest X-rays (COVID-Net label files; data_formats.md §3, xmir.md §2.4).

Files under ``data.root``: label lists (space-separated, no header) and the images in ``train/``,
``test/`` (and ``val/`` for COVIDx CXR-4). Lines have 3 fields ``patient_id filename label``
(COVIDx 2-5) or 4 fields ``patient_id filename label source`` (COVIDx 7+); both can occur in one
file. Images are keyed by their full file name (names contain several dots).

Data-config fields (defaults in ``DEFAULTS``):
  covidx_train / covidx_test / covidx_val: list file names under root ("" = no such split);
    defaults are X-MIR's ``train_split.txt`` and ``test_COVIDx4.txt``.
  covidx_classes: label names in class order; X-MIR: normal 0, pneumonia 1, COVID-19 2.
    Binary "B" files use ["negative", "positive"].
"""

from __future__ import annotations

import os

import ml_collections

from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

DEFAULTS: dict = {
    "covidx_train": "train_split.txt",
    "covidx_test": "test_COVIDx4.txt",
    "covidx_val": "",
    "covidx_classes": ["normal", "pneumonia", "COVID-19"],
}
BACKGROUND_NAMES = ("normal", "negative")


def read_label_file(
    path: str, image_dir: str, classes: list[str], report: BadSampleReport
) -> list[Record]:
    """Records of one COVIDx label file (3- or 4-field lines)."""
    index = {c: i for i, c in enumerate(classes)}
    out: list[Record] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            parts = line.split()
            if not parts:
                continue
            if len(parts) not in (3, 4):
                report.bad(
                    where,
                    f"{len(parts)} fields {parts}",
                    "'patient_id filename label' or 'patient_id filename label source'",
                )
                continue
            pid, fname, label = parts[0], parts[1], parts[2]
            if label not in index:
                report.bad(where, f"unknown label {label!r}", f"one of {classes}")
                continue
            if not loading.first_sighting(seen, fname, where, report):
                continue
            meta = {"where": where, "source": parts[3] if len(parts) == 4 else ""}
            out.append(
                Record(
                    image_id=fname,
                    path=os.path.join(image_dir, fname),
                    labels=multi_hot([index[label]], len(classes)),
                    patient_id=pid,
                    meta=meta,
                )
            )
    return out


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads COVIDx from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    classes = list(opt("covidx_classes"))
    splits = {}
    for split in ("train", "val", "test"):
        name = opt(f"covidx_{split}")
        if not name:
            continue
        path = loading.require_file(
            os.path.join(root, name), f"COVIDx {split} list data.covidx_{split}"
        )
        records = read_label_file(path, os.path.join(root, split), classes, report)
        splits[split] = loading.check_files(records, report)
    background = next((classes.index(c) for c in BACKGROUND_NAMES if c in classes), None)
    index = DatasetIndex(
        name="covidx",
        class_names=classes,
        splits=splits,
        multilabel=False,
        background_class=background,
    )
    return loading.finish(index, cfg, DEFAULTS)

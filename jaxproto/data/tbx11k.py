"""TBX11K chest X-rays with TB boxes as CSR concepts (data_formats.md §5, csr.md §7).

Files under ``data.root``: ``imgs/{health,sick,tb}/*.png``, ``lists/TBX11K_{train,val}.txt``
(one image path per line; the parent folder gives the class; ``health/h0001.png`` and
``imgs/health/h0001.png`` styles both parse) and COCO json boxes
``annotations/json/TBX11K_{train,val}_only_tb.json`` (``bbox`` = [x, y, w, h] in the 512-px image,
``file_name`` relative to ``imgs/``).

Classes (CSR's most likely task): healthy 0, sick_non_tb 1, tb 2. The official test labels are
withheld, so ``test`` is the official val list (``data.tbx11k_test_from="val"``) or carved
patient-wise from train (``"train"``, with ``data.test_fraction``). Concepts: no public 14-concept
annotation exists (csr.md §7); the fallback is the 3 TB box categories, with each box as a concept
box and the image's concept vector = which categories it has boxes of.

Data-config fields (defaults in ``DEFAULTS``): tbx11k_train_list, tbx11k_val_list,
tbx11k_train_json, tbx11k_val_json ("" = no boxes), tbx11k_test_from, test_fraction.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, Box, DatasetIndex, Record, multi_hot

CLASS_NAMES = ["healthy", "sick_non_tb", "tb"]
FOLDER_CLASS = {"health": 0, "sick": 1, "tb": 2}
CONCEPT_NAMES = ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "PulmonaryTuberculosis"]

DEFAULTS: dict = {
    "tbx11k_train_list": "lists/TBX11K_train.txt",
    "tbx11k_val_list": "lists/TBX11K_val.txt",
    "tbx11k_train_json": "annotations/json/TBX11K_train_only_tb.json",
    "tbx11k_val_json": "annotations/json/TBX11K_val_only_tb.json",
    "tbx11k_test_from": "val",
    "test_fraction": 0.2,
}


def read_list(path: str, root: str, report: BadSampleReport) -> list[Record]:
    records, seen = [], set()
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            entry = line.strip().replace("\\", "/")
            if not entry:
                continue
            parts = entry.split("/")
            if len(parts) < 2 or parts[-2] not in FOLDER_CLASS:
                report.bad(where, f"path {entry!r}", f"'<{'|'.join(FOLDER_CLASS)}>/<file>.png'")
                continue
            rel = "/".join(parts[-2:])
            if not loading.first_sighting(seen, rel, where, report):
                continue
            records.append(
                Record(
                    image_id=rel,
                    path=os.path.join(root, "imgs", *parts[-2:]),
                    labels=multi_hot([FOLDER_CLASS[parts[-2]]], len(CLASS_NAMES)),
                    concepts=np.zeros((len(CONCEPT_NAMES),), np.float32),
                    meta={"where": where},
                )
            )
    return records


def read_coco_boxes(path: str, report: BadSampleReport) -> dict[str, list[Box]]:
    """``file_name`` -> concept boxes from a TBX11K COCO json."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read COCO json ({type(e).__name__}: {e})") from e
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise DataError(f"{path}: missing COCO key(s) {missing}; found {sorted(coco)}")
    cat = {}
    for c in coco["categories"]:
        if c.get("name") not in CONCEPT_NAMES:
            raise DataError(f"{path}: unknown category {c}; expected names {CONCEPT_NAMES}")
        cat[c["id"]] = CONCEPT_NAMES.index(c["name"])
    names = {im["id"]: im["file_name"].replace("\\", "/") for im in coco["images"]}
    boxes: dict[str, list[Box]] = {}
    for k, ann in enumerate(coco["annotations"]):
        where = f"{path}: annotations[{k}]"
        if ann.get("image_id") not in names:
            report.bad(where, f"image_id {ann.get('image_id')!r} not in images", "a listed image")
            continue
        if ann.get("category_id") not in cat:
            report.bad(
                where, f"unknown category_id {ann.get('category_id')!r}", f"one of {sorted(cat)}"
            )
            continue
        bbox = ann.get("bbox", [])
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            report.bad(where, f"bbox {bbox}", "[x, y, w, h] with w, h > 0")
            continue
        name = "/".join(names[ann["image_id"]].split("/")[-2:])
        boxes.setdefault(name, []).append(
            Box(cat[ann["category_id"]], *map(float, bbox), is_concept=True)
        )
    return boxes


def _attach(
    records: list[Record], boxes: dict[str, list[Box]], json_path: str, report: BadSampleReport
) -> None:
    by_id = {r.image_id: r for r in records}
    for name, bs in boxes.items():
        if name not in by_id:
            report.bad(
                json_path,
                f"boxes for {name!r} which is not in the split list",
                "boxes only for listed images",
            )
            continue
        r = by_id[name]
        r.boxes = tuple(bs)
        r.concepts = multi_hot(sorted({b.label for b in bs}), len(CONCEPT_NAMES))


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads TBX11K from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    splits = {}
    for split in ("train", "val"):
        path = loading.require_file(
            os.path.join(root, opt(f"tbx11k_{split}_list")), f"{split} list"
        )
        records = read_list(path, root, report)
        if opt(f"tbx11k_{split}_json"):
            jpath = loading.require_file(
                os.path.join(root, opt(f"tbx11k_{split}_json")), "COCO json"
            )
            _attach(records, read_coco_boxes(jpath, report), jpath, report)
        splits[split] = loading.check_files(records, report)
    test_from = opt("tbx11k_test_from")
    index = DatasetIndex(
        name="tbx11k",
        class_names=list(CLASS_NAMES),
        splits=splits,
        multilabel=False,
        background_class=0,
        concept_names=list(CONCEPT_NAMES),
    )
    if test_from == "val":
        index.splits["test"] = index.splits.pop("val")
    elif test_from == "train":
        loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    else:
        raise ValueError(f"data.tbx11k_test_from must be 'val' or 'train', got {test_from!r}")
    return loading.finish(index, cfg, DEFAULTS)

"""Chest X-Ray pneumonia (Kermany et al. 2018 / CoronaHack): NORMAL (0) vs PNEUMONIA (1)
(data_formats.md §9, medmicn.md §6).

Layout under ``data.root`` (optionally inside ``chest_xray/``): ``{train,test}/{NORMAL,
PNEUMONIA}/*.jpeg`` (5,309 / 624 in Med-MICN's count), plus the Kaggle copy's tiny ``val/``
folder when present. The folder names are the labels. No concept list is published for this
dataset: ``data.kermany_concepts`` names the columns of ``data.kermany_concept_csv``
(``image`` = the path relative to the dataset folder, e.g. ``train/NORMAL/IM-0115-0001.jpeg``);
without that file the records carry no concepts (use the pseudo-labeller to write one).
"""

from __future__ import annotations

import os

import ml_collections

from jaxproto.common.errors import DataError
from jaxproto.data import concept_tables, loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

CLASS_NAMES = ["NORMAL", "PNEUMONIA"]
# Ours (the paper gives none for this dataset): radiological findings a VLM can ground.
CONCEPT_NAMES = [
    "Consolidation", "Air bronchogram", "Interstitial opacity", "Pleural effusion",
    "Clear lung fields", "Hyperinflation",
]  # fmt: skip
IMAGE_EXTS = (".jpeg", ".jpg", ".png")

DEFAULTS: dict = {
    "kermany_concept_csv": "kermany_concepts.csv",
    "kermany_concepts": list(CONCEPT_NAMES),
}


def _dataset_dir(root: str) -> str:
    nested = os.path.join(root, "chest_xray")
    return nested if os.path.isdir(os.path.join(nested, "train")) else root


def _split(base: str, split: str) -> list[Record]:
    out = []
    for label, cls in enumerate(CLASS_NAMES):
        folder = os.path.join(base, split, cls)
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: Kermany {split} folder of class {cls} not found")
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTS):
                rel = f"{split}/{cls}/{name}"
                out.append(Record(rel, os.path.join(folder, name), multi_hot([label], 2)))
    return out


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads the Kermany folders under ``cfg.root``; see the module docstring."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    base = _dataset_dir(root)
    splits = {s: _split(base, s) for s in ("train", "test")}
    if os.path.isdir(os.path.join(base, "val")):
        splits["val"] = _split(base, "val")
    names = list(opt("kermany_concepts"))
    table, path = concept_tables.optional_table(
        base, opt("kermany_concept_csv"), "image", names, report
    )
    for split, recs in splits.items():
        splits[split] = concept_tables.attach(recs, table, path, report)
    index = DatasetIndex(
        name="kermany",
        class_names=list(CLASS_NAMES),
        splits=splits,
        multilabel=False,
        background_class=None,
        concept_names=names if table is not None else [],
    )
    return loading.finish(index, cfg, DEFAULTS)

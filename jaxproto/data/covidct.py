"""COVID-CT (UCSD-AI4H): CT slices, CT_COVID (class 0) vs CT_NonCOVID (data_formats.md §9,
medmicn.md §5-6).

Files under ``data.root``: images in ``Images-processed/CT_COVID/`` and
``Images-processed/CT_NonCOVID/``; the official split lists ``Data-split/COVID/{train,val,test}
CT_COVID.txt`` and ``Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt`` (one file name per
line). ``data.covidct_split='official'`` uses them (val = 118 images, the split the paper's
numbers fit); ``'random'`` lists the folders and carves a seeded ``data.test_fraction`` (the
paper's 8:2). Concepts: the 8 of the paper's Table 3 (``data.covidct_concepts``), labels from
``data.covidct_concept_csv`` (``image`` + one 0/1 column per concept) when present.
"""

from __future__ import annotations

import os

import ml_collections

from jaxproto.common.errors import DataError
from jaxproto.data import concept_tables, loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

CLASS_NAMES = ["CT_COVID", "CT_NonCOVID"]
SPLIT_FOLDERS = {"CT_COVID": "COVID", "CT_NonCOVID": "NonCOVID"}
CONCEPT_NAMES = [
    "Peripheral ground-glass opacities", "Bilateral involvement", "Multilobar distribution",
    "Crazy-paving pattern", "Absence of lobar consolidation", "Localized or diffuse presentation",
    "Increased density in the lung", "Ground-glass appearance",
]  # fmt: skip
IMAGE_EXTS = (".png", ".jpg", ".jpeg")

DEFAULTS: dict = {
    "covidct_image_dir": "Images-processed",
    "covidct_split_dir": "Data-split",
    "covidct_split": "official",
    "covidct_concept_csv": "covidct_concepts.csv",
    "covidct_concepts": list(CONCEPT_NAMES),
    "test_fraction": 0.2,
}


def _read_list(path: str, image_dir: str, label: int, report: BadSampleReport) -> list[Record]:
    out = []
    with loading.open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            out.append(
                Record(
                    image_id=name,
                    path=os.path.join(image_dir, name),
                    labels=multi_hot([label], 2),
                    meta={"where": f"{path}:{line_no}"},
                )
            )
    return loading.check_duplicates(out, path, report)


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads COVID-CT from ``cfg.root``; see the module docstring."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    image_root = os.path.join(root, opt("covidct_image_dir"))
    mode = opt("covidct_split")
    splits: dict[str, list[Record]] = {}
    if mode == "official":
        split_root = os.path.join(root, opt("covidct_split_dir"))
        for split in ("train", "val", "test"):
            for label, cls in enumerate(CLASS_NAMES):
                path = os.path.join(split_root, SPLIT_FOLDERS[cls], f"{split}{cls}.txt")
                loading.require_file(path, f"COVID-CT {split} list of {cls}")
                recs = _read_list(path, os.path.join(image_root, cls), label, report)
                splits.setdefault(split, []).extend(recs)
    elif mode == "random":
        recs = []
        for label, cls in enumerate(CLASS_NAMES):
            folder = os.path.join(image_root, cls)
            if not os.path.isdir(folder):
                raise DataError(f"{folder}: COVID-CT image folder of {cls} not found")
            for name in sorted(os.listdir(folder)):
                if name.lower().endswith(IMAGE_EXTS):
                    recs.append(Record(name, os.path.join(folder, name), multi_hot([label], 2)))
        splits["train"] = recs
    else:
        raise ValueError(f"data.covidct_split must be 'official' or 'random', got {mode!r}")
    names = list(opt("covidct_concepts"))
    table, path = concept_tables.optional_table(
        root, opt("covidct_concept_csv"), "image", names, report
    )
    for split in splits:
        splits[split] = concept_tables.attach(
            loading.check_files(splits[split], report), table, path, report
        )
    index = DatasetIndex(
        name="covidct",
        class_names=list(CLASS_NAMES),
        splits=splits,
        multilabel=False,
        concept_names=names if table is not None else [],
    )
    if mode == "random":
        loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    return loading.finish(index, cfg, DEFAULTS)

"""Fitzpatrick17k with SkinCon concepts: non-malignant (0) vs malignant (1) (data_formats.md §9,
medmicn.md §5-6).

Files under ``data.root``: ``fitzpatrick17k.csv`` (``md5hash, fitzpatrick_scale, label,
three_partition_label, ...``), the images ``images/<md5hash>.jpg`` and SkinCon's
``annotations_fitzpatrick17k.csv`` (``ImageID`` = ``<md5hash>.jpg``, the 48 concept columns,
``Do not consider this image``). Only the SkinCon-annotated images are used (3,230 in
Med-MICN); flagged ones are excluded and counted. Malignant iff ``three_partition_label`` is
``malignant`` (else ``benign`` / ``non-neoplastic``). Split: seeded ``data.test_fraction`` (8:2).
"""

from __future__ import annotations

import logging
import os

import ml_collections

from jaxproto.data import concept_tables, loading
from jaxproto.data.ddi import CONCEPT_NAMES
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

log = logging.getLogger(__name__)

CLASS_NAMES = ["non-malignant", "malignant"]
PARTITIONS = ("benign", "malignant", "non-neoplastic")

DEFAULTS: dict = {
    "fitzpatrick_csv": "fitzpatrick17k.csv",
    "fitzpatrick_skincon_csv": "annotations_fitzpatrick17k.csv",
    "fitzpatrick_image_dir": "images",
    "fitzpatrick_concepts": list(CONCEPT_NAMES),
    "test_fraction": 0.2,
}


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads Fitzpatrick17k + SkinCon from ``cfg.root``; see the module docstring."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    meta = loading.require_file(os.path.join(root, opt("fitzpatrick_csv")), "Fitzpatrick17k table")
    sk_path = loading.require_file(
        os.path.join(root, opt("fitzpatrick_skincon_csv")), "SkinCon Fitzpatrick17k annotations"
    )
    names = list(opt("fitzpatrick_concepts"))
    table = concept_tables.read_concept_table(sk_path, "ImageID", names, report)
    image_dir = os.path.join(root, opt("fitzpatrick_image_dir"))
    records, not_annotated = [], 0
    for line, row in loading.read_csv_rows(meta, ["md5hash", "three_partition_label"]):
        where = f"{meta}:{line}"
        image_id = f"{row['md5hash']}.jpg"
        if image_id not in table.labels:
            not_annotated += image_id not in table.excluded
            continue
        part = row["three_partition_label"]
        if part not in PARTITIONS:
            report.bad(where, f"three_partition_label={part!r}", f"one of {list(PARTITIONS)}")
            continue
        records.append(
            Record(
                image_id=image_id,
                path=os.path.join(image_dir, image_id),
                labels=multi_hot([int(part == "malignant")], 2),
                concepts=table.labels[image_id],
                meta={"where": where, "fitzpatrick_scale": row.get("fitzpatrick_scale", "")},
            )
        )
    log.info(
        "Fitzpatrick17k: %d SkinCon-annotated images; %d rows without SkinCon labels, %d flagged "
        "'Do not consider' (not used)",
        len(records),
        not_annotated,
        len(table.excluded),
    )
    index = DatasetIndex(
        name="fitzpatrick17k",
        class_names=list(CLASS_NAMES),
        splits={
            "train": loading.check_duplicates(loading.check_files(records, report), meta, report)
        },
        multilabel=False,
        concept_names=names,
    )
    loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    return loading.finish(index, cfg, DEFAULTS)

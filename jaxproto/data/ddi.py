"""DDI (Diverse Dermatology Images): benign vs malignant, optional SkinCon concepts
(data_formats.md §7, medmicn.md §5-6).

Files under ``data.root``: ``ddi_metadata.csv`` (``DDI_ID, DDI_file, skin_tone, malignant,
disease``; a leading unnamed index column is allowed) and the PNGs in ``images/`` (Med-MICN
layout) or directly in the root (the published archive). ``malignant`` is True/False (or 1/0);
when the column is missing, ``malignancy(malig=1)`` is used. Concepts (Med-MICN's 13 SkinCon
columns) come from ``data.ddi_concept_csv`` (``ddi_metadata_concept.csv``: the metadata joined
with SkinCon on the file name; not distributed) when that file exists, else none.

No official split: ``test`` is a seeded random ``data.test_fraction`` of the images (Med-MICN's
code 0.15 -> 557/99; the paper says 0.2). Classes: benign 0, malignant 1.
"""

from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np

from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

log = logging.getLogger(__name__)

CLASS_NAMES = ["benign", "malignant"]
CONCEPT_NAMES = [
    "Vesicle", "Papule", "Exudate", "Fissure", "Xerosis", "Warty/Papillomatous",
    "Brown(Hyperpigmentation)", "Translucent", "White(Hypopigmentation)", "Erythema", "Wheal",
    "Pigmented", "Cyst",
]  # fmt: skip
TRUE, FALSE = ("true", "1", "1.0"), ("false", "0", "0.0")

DEFAULTS: dict = {
    "ddi_metadata_csv": "ddi_metadata.csv",
    "ddi_concept_csv": "ddi_metadata_concept.csv",
    "ddi_concepts": list(CONCEPT_NAMES),
    "test_fraction": 0.15,
}


def _bool(value: str, where: str, column: str, report: BadSampleReport) -> bool | None:
    v = value.strip().lower()
    if v in TRUE or v in FALSE:
        return v in TRUE
    report.bad(where, f"{column}={value!r}", "True/False or 1/0")
    return None


def read_concepts(path: str, names: list[str], report: BadSampleReport) -> dict[str, np.ndarray]:
    """DDI_file -> 0/1 concept vector from the SkinCon-joined table."""
    out = {}
    for line, row in loading.read_csv_rows(path, ["DDI_file", *names]):
        where = f"{path}:{line}"
        flags = [_bool(row[n], where, n, report) for n in names]
        if any(f is None for f in flags):
            continue
        if row["DDI_file"] in out:
            report.bad(where, f"duplicate image id {row['DDI_file']!r}", "each image once")
            continue
        out[row["DDI_file"]] = np.array(flags, np.float32)
    return out


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads DDI from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    meta_path = loading.require_file(os.path.join(root, opt("ddi_metadata_csv")), "DDI metadata")
    image_dir = os.path.join(root, "images")
    image_dir = image_dir if os.path.isdir(image_dir) else root
    concept_path = os.path.join(root, opt("ddi_concept_csv")) if opt("ddi_concept_csv") else ""
    names = list(opt("ddi_concepts"))
    concepts = None
    if concept_path and os.path.isfile(concept_path):
        concepts = read_concepts(concept_path, names, report)
    else:
        log.info("no DDI concept table %r: records carry no concepts", concept_path)
    with loading.open_text(meta_path) as f:
        header = f.readline()
    label_col = "malignant" if "malignant" in header else "malignancy(malig=1)"
    records, seen = [], set()
    for line, row in loading.read_csv_rows(meta_path, ["DDI_file", "skin_tone", label_col]):
        where = f"{meta_path}:{line}"
        fname = row["DDI_file"]
        if not loading.first_sighting(seen, fname, where, report):
            continue
        malignant = _bool(row[label_col], where, label_col, report)
        if malignant is None:
            continue
        if row["skin_tone"] not in ("12", "34", "56"):
            report.bad(where, f"skin_tone={row['skin_tone']!r}", "12, 34 or 56")
            continue
        concept_vec = None
        if concepts is not None:
            if fname not in concepts:
                report.bad(where, f"{fname!r} has no row in {concept_path}", "concepts per image")
                continue
            concept_vec = concepts[fname]
        records.append(
            Record(
                image_id=fname,
                path=os.path.join(image_dir, fname),
                labels=multi_hot([int(malignant)], 2),
                concepts=concept_vec,
                meta={
                    "where": where,
                    "skin_tone": row["skin_tone"],
                    "disease": row.get("disease", ""),
                },
            )
        )
    index = DatasetIndex(
        name="ddi",
        class_names=list(CLASS_NAMES),
        splits={"train": loading.check_files(records, report)},
        multilabel=False,
        concept_names=names if concepts is not None else [],
    )
    loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    return loading.finish(index, cfg, DEFAULTS)

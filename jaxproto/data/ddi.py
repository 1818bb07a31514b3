"""DDI (Diverse Dermatology Images): benign vs malignant, optional SkinCon concepts
(data_formats.md §7, medmicn.md §5-6).

Files under ``data.root``: ``ddi_metadata.csv`` (``DDI_ID, DDI_file, skin_tone, malignant,
disease``; a leading unnamed index column is allowed) and the PNGs in ``images/`` (Med-MICN
layout) or directly in the root (the published archive). ``malignant`` is True/False (or 1/0);
when the column is missing, ``malignancy(malig=1)`` is used. Concepts (Med-MICN's 13 SkinCon
columns) come from ``data.ddi_concept_csv`` (``ddi_metadata_concept.csv``: the metadata joined
with SkinCon on the file name; not distributed) when that file exists, else from SkinCon's own
DDI table ``data.ddi_skincon_csv`` (``ImageID`` + SkinCon columns, joined here on the file name;
images SkinCon marks 'Do not consider this image' are excluded and counted), else none.

No official split: ``test`` is a seeded random ``data.test_fraction`` of the images (Med-MICN's
code 0.15 -> 557/99; the paper says 0.2). Classes: benign 0, malignant 1.
"""

from __future__ import annotations

import logging
import os

import ml_collections

from jaxproto.data import loading
from jaxproto.data.concept_tables import (
    DO_NOT_CONSIDER,
    ConceptTable,
    parse_bool,
    read_concept_table,
)
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

log = logging.getLogger(__name__)

CLASS_NAMES = ["benign", "malignant"]
CONCEPT_NAMES = [
    "Vesicle", "Papule", "Exudate", "Fissure", "Xerosis", "Warty/Papillomatous",
    "Brown(Hyperpigmentation)", "Translucent", "White(Hypopigmentation)", "Erythema", "Wheal",
    "Pigmented", "Cyst",
]  # fmt: skip

DEFAULTS: dict = {
    "ddi_metadata_csv": "ddi_metadata.csv",
    "ddi_concept_csv": "ddi_metadata_concept.csv",
    "ddi_skincon_csv": "annotations_ddi.csv",
    "ddi_concepts": list(CONCEPT_NAMES),
    "test_fraction": 0.15,
}


def read_concepts(
    root: str, cfg: ml_collections.ConfigDict, names: list[str], report: BadSampleReport
) -> tuple[ConceptTable | None, str]:
    """The concept table and its path: Med-MICN's joined ``ddi_metadata_concept.csv``
    (``DDI_file`` key) if present, else SkinCon's DDI table (``ImageID`` = the DDI file name),
    else (None, "")."""
    for option, key in (("ddi_concept_csv", "DDI_file"), ("ddi_skincon_csv", "ImageID")):
        name = loading.option(cfg, option, DEFAULTS)
        path = os.path.join(root, name) if name else ""
        if path and os.path.isfile(path):
            return read_concept_table(path, key, names, report), path
    log.info("no DDI concept table (data.ddi_concept_csv / data.ddi_skincon_csv): no concepts")
    return None, ""


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads DDI from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    meta_path = loading.require_file(os.path.join(root, opt("ddi_metadata_csv")), "DDI metadata")
    image_dir = os.path.join(root, "images")
    image_dir = image_dir if os.path.isdir(image_dir) else root
    names = list(opt("ddi_concepts"))
    concepts, concept_path = read_concepts(root, cfg, names, report)
    excluded = 0
    with loading.open_text(meta_path) as f:
        header = f.readline()
    label_col = "malignant" if "malignant" in header else "malignancy(malig=1)"
    records, seen = [], set()
    for line, row in loading.read_csv_rows(meta_path, ["DDI_file", "skin_tone", label_col]):
        where = f"{meta_path}:{line}"
        fname = row["DDI_file"]
        if not loading.first_sighting(seen, fname, where, report):
            continue
        malignant = parse_bool(row[label_col], where, label_col, report)
        if malignant is None:
            continue
        if row["skin_tone"] not in ("12", "34", "56"):
            report.bad(where, f"skin_tone={row['skin_tone']!r}", "12, 34 or 56")
            continue
        concept_vec = None
        if concepts is not None:
            if fname in concepts.excluded:
                excluded += 1
                continue
            if fname not in concepts.labels:
                report.bad(where, f"{fname!r} has no row in {concept_path}", "concepts per image")
                continue
            concept_vec = concepts.labels[fname]
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
    if excluded:
        log.info("DDI: %d images excluded by SkinCon's %r flag", excluded, DO_NOT_CONSIDER)
    index = DatasetIndex(
        name="ddi",
        class_names=list(CLASS_NAMES),
        splits={"train": loading.check_files(records, report)},
        multilabel=False,
        concept_names=names if concepts is not None else [],
    )
    loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    return loading.finish(index, cfg, DEFAULTS)

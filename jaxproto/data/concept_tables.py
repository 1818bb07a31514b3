"""Concept-label tables in the SkinCon schema (medmicn.md §5, data_formats.md §7, §9).

One row per image: a key column (``ImageID`` in SkinCon, ``DDI_file`` in Med-MICN's joined
``ddi_metadata_concept.csv``, ``image`` in the tables this package writes for COVID-CT and the
chest X-rays), one 0/1 column per concept, and optionally SkinCon's ``Do not consider this
image`` flag: such images are excluded and counted, not reported as bad.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, Record

log = logging.getLogger(__name__)

DO_NOT_CONSIDER = "Do not consider this image"
TRUE, FALSE = ("true", "1", "1.0"), ("false", "0", "0.0")


@dataclasses.dataclass
class ConceptTable:
    """key -> float32 0/1 vector over ``names``; ``excluded``: keys SkinCon flags out."""

    names: list[str]
    labels: dict[str, np.ndarray]
    excluded: set[str]


def parse_bool(value: str, where: str, column: str, report: BadSampleReport) -> bool | None:
    """True/False or 1/0 (any case); reports anything else and returns None."""
    v = value.strip().lower()
    if v in TRUE or v in FALSE:
        return v in TRUE
    report.bad(where, f"{column}={value!r}", "True/False or 1/0")
    return None


def read_concept_table(
    path: str, key: str, names: Sequence[str], report: BadSampleReport
) -> ConceptTable:
    """Reads ``path``; every concept in ``names`` must be a column (DataError otherwise)."""
    with loading.open_text(path) as f:
        has_flag = DO_NOT_CONSIDER in f.readline()
    labels: dict[str, np.ndarray] = {}
    excluded: set[str] = set()
    for line, row in loading.read_csv_rows(path, [key, *names, *([DO_NOT_CONSIDER] * has_flag)]):
        where = f"{path}:{line}"
        image = row[key]
        if image in labels or image in excluded:
            report.bad(where, f"duplicate image id {image!r}", "each image once")
            continue
        if has_flag:
            flag = parse_bool(row[DO_NOT_CONSIDER], where, DO_NOT_CONSIDER, report)
            if flag is None:
                continue
            if flag:
                excluded.add(image)
                continue
        flags = [parse_bool(row[n], where, n, report) for n in names]
        if any(f is None for f in flags):
            continue
        labels[image] = np.array(flags, np.float32)
    if excluded:
        log.info("%s: %d images flagged %r are excluded", path, len(excluded), DO_NOT_CONSIDER)
    return ConceptTable(list(names), labels, excluded)


def attach(
    records: list[Record], table: ConceptTable | None, path: str, report: BadSampleReport
) -> list[Record]:
    """Sets each record's concepts from ``table`` (keyed by ``image_id``); records missing from
    it are reported, records the table excludes are dropped (and counted by the table)."""
    if table is None:
        return records
    out = []
    for r in records:
        if r.image_id in table.excluded:
            continue
        if r.image_id not in table.labels:
            report.bad(r.meta.get("where", r.path), f"{r.image_id!r} has no row in {path}")
            continue
        r.concepts = table.labels[r.image_id]
        out.append(r)
    return out


def optional_table(
    root: str, file_name: str, key: str, names: list[str], report: BadSampleReport
) -> tuple[ConceptTable | None, str]:
    """The table ``root/file_name`` when that file exists, else (None, path)."""
    path = os.path.join(root, file_name) if file_name else ""
    if path and os.path.isfile(path):
        return read_concept_table(path, key, names, report), path
    return None, path

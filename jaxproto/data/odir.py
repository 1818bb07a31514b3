"""ODIR-5K fundus photographs, one sample per eye (data_formats.md §2, cipl.md §5).

Layouts (``data.odir_format``):
  "oia" (CIPL, default): ``Training Set/Annotation/training annotation (English).xlsx``,
    ``On-site Test Set/Annotation/on-site test annotation (English).xlsx`` and (optional)
    ``Off-site Test Set/Annotation/off-site test annotation (English).xlsx``; each set's images are
    in the sibling folder of ``Annotation`` named ``data.odir_image_folder`` ("Images_crop").
    Splits ``train``, ``test`` (on-site) and ``offsite``.
  "xlsx": one annotation workbook ``data.odir_xlsx`` (original release / Kaggle ``data.xlsx``)
    with images in ``data.odir_image_dir``; ``test`` is carved patient-wise with
    ``data.test_fraction``.
  "full_df": Kaggle ``full_df.csv`` (one row per eye; ``filename`` names the image in
    ``data.odir_image_dir``); ``test`` carved as for "xlsx".

Per-eye labels come from the eye's diagnostic keywords, never from the patient-level N..O columns:
the cell is split on the full-width comma U+FF0C (also on "," when ``data.odir_ascii_comma``),
each keyword is mapped by ``keyword_class``; quality keywords are ignored and an eye with only
quality keywords is dropped; Normal is cleared when a disease is present. Records are ordered
[all left eyes; all right eyes]. Class 7 Normal is the background class.
"""

from __future__ import annotations

import logging
import os
import re

import ml_collections

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

log = logging.getLogger(__name__)

CLASS_NAMES = [
    "Diabetic retinopathy", "Glaucoma", "Cataract", "AMD", "Hypertensive retinopathy", "Myopia",
    "Other", "Normal",
]  # fmt: skip
NORMAL = 7
OTHER = 6
QUALITY_KEYWORDS = frozenset({
    "lens dust", "optic disk photographically invisible", "low image quality", "no fundus image",
    "image offset", "anterior segment image",
})  # fmt: skip
FULL_WIDTH_COMMA = "\uff0c"

SETS = {
    "train": ("Training Set", "training annotation (English).xlsx"),
    "test": ("On-site Test Set", "on-site test annotation (English).xlsx"),
    "offsite": ("Off-site Test Set", "off-site test annotation (English).xlsx"),
}
XLSX_COLUMNS = ["ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
                "Right-Diagnostic Keywords"]  # fmt: skip
FULL_DF_COLUMNS = ["ID", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords", "filename"]

DEFAULTS: dict = {
    "odir_format": "oia",
    "odir_image_folder": "Images_crop",
    "odir_xlsx": "ODIR-5K/ODIR-5K/data.xlsx",
    "odir_csv": "full_df.csv",
    "odir_image_dir": "ODIR-5K/ODIR-5K/Training Images",
    "odir_ascii_comma": False,
    "test_fraction": 0.2,
}


def keyword_class(keyword: str) -> int | None:
    """Class of one diagnostic keyword (None for quality keywords), cipl.md §5 grouping:
    DR family -> 0, glaucoma -> 1, cataract -> 2, AMD family -> 3, hypertension -> 4,
    myopia family -> 5, "normal fundus" -> 7, anything else -> 6 (Other)."""
    k = keyword.strip().lower()
    if k in QUALITY_KEYWORDS:
        return None
    if k == "normal fundus":
        return NORMAL
    if "diabetic retinopathy" in k or "proliferative retinopathy" in k:
        return 0
    if "glaucoma" in k:
        return 1
    if "cataract" in k:
        return 2
    if "age-related macular degeneration" in k:
        return 3
    if "hypertensive" in k:
        return 4
    if "myopi" in k:
        return 5
    return OTHER


def eye_classes(cell: str, ascii_comma: bool = False) -> list[int]:
    """Sorted classes of one eye's keyword cell; empty when the eye has no usable label."""
    sep = f"[{FULL_WIDTH_COMMA},]" if ascii_comma else FULL_WIDTH_COMMA
    found = {keyword_class(k) for k in re.split(sep, cell) if k.strip()}
    found.discard(None)
    if len(found) > 1:
        found.discard(NORMAL)
    return sorted(found)


def _read_xlsx(path: str, required: list[str]) -> list[tuple[int, dict[str, str]]]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:
        raise DataError(f"{path}: cannot read workbook ({type(e).__name__}: {e})") from e
    try:
        rows = wb.worksheets[0].iter_rows(values_only=True)
        header = ["" if v is None else str(v).strip() for v in next(rows, ())]
        cols = loading.check_header(path, header, required)
        out = []
        for line, row in enumerate(rows, start=2):
            values = ["" if v is None else str(v).strip() for v in row]
            if not any(values):
                continue
            values += [""] * (len(header) - len(values))
            out.append((line, {name: values[i] for name, i in cols.items()}))
        return out
    finally:
        wb.close()


def _eye_record(
    pid: str, eye: str, fname: str, cell: str, image_dir: str, where: str, ascii_comma: bool
) -> Record | None:
    classes = eye_classes(cell, ascii_comma)
    if not classes:
        log.debug(
            "%s: %s eye of %s has only quality keywords %r (dropped, cipl.md §5)",
            where,
            eye,
            pid,
            cell,
        )
        return None
    return Record(
        image_id=fname,
        path=os.path.join(image_dir, fname),
        labels=multi_hot(classes, len(CLASS_NAMES)),
        patient_id=pid,
        meta={"eye": eye, "keywords": cell, "where": where},
    )


def _patient_rows(path, rows, image_dir, ascii_comma, report) -> list[Record]:
    left, right, seen = [], [], set()
    for line, row in rows:
        where = f"{path}:{line}"
        pid = row["ID"]
        if pid.endswith(".0"):
            pid = pid[:-2]
        if pid in seen:
            report.bad(where, f"duplicate patient ID {pid!r}", "one row per patient")
            continue
        seen.add(pid)
        for eye, out in (("Left", left), ("Right", right)):
            fname = row[f"{eye}-Fundus"]
            if not fname:
                report.bad(where, f"empty {eye}-Fundus", "an image file name")
                continue
            r = _eye_record(
                pid,
                eye.lower(),
                fname,
                row[f"{eye}-Diagnostic Keywords"],
                image_dir,
                where,
                ascii_comma,
            )
            if r is not None:
                out.append(r)
    return left + right


def _full_df_rows(path, image_dir, ascii_comma, report) -> list[Record]:
    left, right, seen = [], [], set()
    for line, row in loading.read_csv_rows(path, FULL_DF_COLUMNS):
        where = f"{path}:{line}"
        fname = row["filename"]
        m = re.fullmatch(r"(.+)_(left|right)\.\w+", fname)
        if not m:
            report.bad(where, f"filename {fname!r}", "'<ID>_left.jpg' or '<ID>_right.jpg'")
            continue
        if not loading.first_sighting(seen, fname, where, report):
            continue
        eye = m.group(2)
        r = _eye_record(
            row["ID"],
            eye,
            fname,
            row[f"{eye.capitalize()}-Diagnostic Keywords"],
            image_dir,
            where,
            ascii_comma,
        )
        if r is not None:
            (left if eye == "left" else right).append(r)
    return left + right


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads ODIR-5K from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    fmt, ascii_comma = opt("odir_format"), bool(opt("odir_ascii_comma"))
    splits: dict[str, list[Record]] = {}
    if fmt == "oia":
        for split, (folder, fname) in SETS.items():
            path = os.path.join(root, folder, "Annotation", fname)
            if not os.path.isfile(path):
                if split == "offsite":
                    log.info("%s not found: no offsite split", path)
                    continue
                raise DataError(f"{path}: ODIR annotation workbook not found")
            image_dir = os.path.join(root, folder, opt("odir_image_folder"))
            rows = _read_xlsx(path, XLSX_COLUMNS)
            splits[split] = _patient_rows(path, rows, image_dir, ascii_comma, report)
    elif fmt in ("xlsx", "full_df"):
        image_dir = os.path.join(root, opt("odir_image_dir"))
        if fmt == "xlsx":
            path = loading.require_file(os.path.join(root, opt("odir_xlsx")), "ODIR workbook")
            records = _patient_rows(
                path, _read_xlsx(path, XLSX_COLUMNS), image_dir, ascii_comma, report
            )
        else:
            path = loading.require_file(os.path.join(root, opt("odir_csv")), "ODIR full_df.csv")
            records = _full_df_rows(path, image_dir, ascii_comma, report)
        splits["train"] = records
    else:
        raise ValueError(f"data.odir_format must be 'oia', 'xlsx' or 'full_df', got {fmt!r}")
    for split in splits:
        splits[split] = loading.check_files(
            loading.check_duplicates(splits[split], split, report), report
        )
    index = DatasetIndex(
        "odir", list(CLASS_NAMES), splits, multilabel=True, background_class=NORMAL
    )
    if fmt != "oia":
        loading.carve_split(index, "train", float(opt("test_fraction")), int(opt("seed")), "test")
    return loading.finish(index, cfg, DEFAULTS)

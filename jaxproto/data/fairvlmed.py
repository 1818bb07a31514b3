"""Harvard-FairVLMed (FairCLIP, CVPR 2024): SLO fundus images with clinical notes, glaucoma
no / yes (cfn.md §9), in its published layout.

Files under ``data.root``: ``Training/``, ``Validation/`` and ``Test/`` (the dataset README's tree
says ``Testing/``; either is accepted), each holding ``data_<id>.npz`` files (7,000 / 1,000 /
2,000) with the fields ``slo_fundus`` (the SLO fundus image, 2-D uint8), ``glaucoma`` (0 / 1) and
``note`` (the de-identified clinical note), plus demographics (``age``, ``gender``, ``race``,
``ethnicity``, ``language``, ``maritalstatus``; kept in ``meta`` when present), ``md``, ``tds``
and in newer copies ``note_extra`` (the note with demographics prepended).

Each record's report (``meta["report"]``, what CFN's report-based naming reads) is the field
``data.fairvlmed_text`` (``note`` by default, or ``note_extra``). The fundus arrays are written
once as PNG files, named as in CFN's split files (``Test/slo_fundus_08002``), under
``data.fairvlmed_png_dir`` (default ``<root>/slo_fundus_png``), so the input pipeline reads
plain images; a PNG older than its npz is rewritten. Like CFN, every sample is kept (FairCLIP's
evaluation drops those with unknown demographics; CFN's split counts are the full 7,000 / 1,000
/ 2,000). Class names ``no``, ``yes`` (CFN's fundus keys).

Bad input (an unreadable npz, a missing field, ``glaucoma`` not 0/1, an empty note, an image
that is not 2-D or 3-channel 0..255) goes through the bad-sample report naming the file.
"""

from __future__ import annotations

import logging
import os
import zipfile

import ml_collections
import numpy as np
from PIL import Image

from jaxproto.common.errors import DataError
from jaxproto.data import loading
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record, multi_hot

log = logging.getLogger(__name__)

CLASS_NAMES = ["no", "yes"]
SPLIT_DIRS = {"train": ("Training",), "val": ("Validation",), "test": ("Test", "Testing")}
DEMOGRAPHICS = ("age", "gender", "race", "ethnicity", "language", "maritalstatus")
TEXT_FIELDS = ("note", "note_extra")

DEFAULTS: dict = {"fairvlmed_text": "note", "fairvlmed_png_dir": ""}


def _split_dir(root: str, split: str) -> str:
    found = [d for d in SPLIT_DIRS[split] if os.path.isdir(os.path.join(root, d))]
    if len(found) != 1:
        names = " or ".join(f"{d}/" for d in SPLIT_DIRS[split])
        what = "both" if found else "neither"
        raise DataError(f"{root}: expected one FairVLMed {split} folder {names}, found {what}")
    return os.path.join(root, found[0])


def _scalar(data, key: str):
    if key not in data.files:
        raise ValueError(f"field {key!r} missing (fields: {sorted(data.files)})")
    value = np.asarray(data[key]).reshape(-1)
    return value[0].item() if value.size else None


def _image(data) -> np.ndarray:
    if "slo_fundus" not in data.files:
        raise ValueError(f"field 'slo_fundus' missing (fields: {sorted(data.files)})")
    img = np.asarray(data["slo_fundus"])
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or img.size == 0:
        raise ValueError(f"slo_fundus has shape {img.shape}, expected (H, W) or (H, W, 3)")
    if img.dtype != np.uint8:
        if not np.issubdtype(img.dtype, np.number) or img.min() < 0 or img.max() > 255:
            raise ValueError(f"slo_fundus {img.dtype} values outside 0..255")
        img = np.rint(img).astype(np.uint8)
    return img


def _write_png(img: np.ndarray, png: str) -> None:
    os.makedirs(os.path.dirname(png), exist_ok=True)
    tmp = f"{png}.tmp.png"
    Image.fromarray(img).save(tmp)
    os.replace(tmp, png)


def _record(path: str, split_dir: str, png_dir: str, text_field: str) -> Record:
    stem = os.path.splitext(os.path.basename(path))[0]
    number = stem[len("data_") :]
    png = os.path.join(png_dir, os.path.basename(split_dir), f"slo_fundus_{number}.png")
    with np.load(path, allow_pickle=False) as data:
        label = _scalar(data, "glaucoma")
        if label is None or float(label) not in (0.0, 1.0):
            raise ValueError(f"glaucoma is {label!r}, expected 0 or 1")
        note = _scalar(data, text_field)
        if not isinstance(note, str) or not note.strip():
            raise ValueError(f"{text_field} is {note!r}, expected a non-empty clinical note")
        meta = {k: _scalar(data, k) for k in DEMOGRAPHICS if k in data.files}
        if not os.path.isfile(png) or os.path.getmtime(png) < os.path.getmtime(path):
            _write_png(_image(data), png)
    meta.update({"report": note.strip(), "where": path, "npz": path})
    return Record(
        image_id=stem,
        path=png,
        labels=multi_hot([int(label)], len(CLASS_NAMES)),
        patient_id=stem,
        meta=meta,
    )


def load(cfg: ml_collections.ConfigDict, report: BadSampleReport) -> DatasetIndex:
    """Reads FairVLMed from ``cfg.root``; see the module docstring for the fields."""
    root, opt = loading.root_and_options(cfg, DEFAULTS)
    text_field = opt("fairvlmed_text")
    if text_field not in TEXT_FIELDS:
        raise ValueError(f"data.fairvlmed_text must be one of {TEXT_FIELDS}, got {text_field!r}")
    png_dir = opt("fairvlmed_png_dir") or os.path.join(root, "slo_fundus_png")
    try:
        os.makedirs(png_dir, exist_ok=True)
    except OSError as e:
        msg = f"cannot create the PNG folder {png_dir} ({e}); set data.fairvlmed_png_dir"
        raise DataError(msg) from None
    if not os.access(png_dir, os.W_OK):
        raise DataError(f"{png_dir} is not writable; set data.fairvlmed_png_dir to a folder")
    folders = {split: _split_dir(root, split) for split in SPLIT_DIRS}
    splits = {}
    for split, folder in folders.items():
        files = sorted(
            f for f in os.listdir(folder) if f.startswith("data_") and f.endswith(".npz")
        )
        if not files:
            raise DataError(f"{folder}: no data_<id>.npz files (FairVLMed {split} split)")
        records = []
        for name in files:
            path = os.path.join(folder, name)
            try:
                records.append(_record(path, folder, png_dir, text_field))
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                report.bad(path, str(e), "a FairVLMed npz with slo_fundus, glaucoma and a note")
        splits[split] = records
        log.info("FairVLMed %s: %d samples from %s", split, len(records), folder)
    index = DatasetIndex(
        name="fairvlmed", class_names=list(CLASS_NAMES), splits=splits, multilabel=False
    )
    return loading.finish(index, cfg, {**DEFAULTS, "val_fraction": 0.0})

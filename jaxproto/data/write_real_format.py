"""Writes a DatasetIndex and its images in a real dataset's published on-disk layout.

Used by ``python -m jaxproto.data.synthetic --like X --out DIR`` and by the loader tests, so each
loader is exercised end to end on files shaped exactly like the real ones (data_formats.md). Class
names of the index must be the dataset's own (``jaxproto.data.<dataset>.CLASS_NAMES``). Split
mapping: ``train`` and ``val`` go to the published training/validation files (NIH, whose val is not
published, gets them in ``train_val_list.txt``); ``test`` to the test files; ODIR's ``offsite`` to
the off-site set. Datasets without published test labels (VinDr Kaggle, DDI, HAM10000) get every
record in their single table.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from jaxproto.data import chestxray14, covidx, ddi, ham10000, isic, odir, tbx11k, vindr
from jaxproto.data.records import DatasetIndex, Record

ImageFn = Callable[[Record], np.ndarray]

ODIR_KEYWORDS = [
    "moderate non proliferative retinopathy", "glaucoma", "cataract",
    "dry age-related macular degeneration", "hypertensive retinopathy", "pathological myopia",
    "epiretinal membrane", "normal fundus",
]  # fmt: skip


def _save(img: np.ndarray, path: str, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.asarray(img, np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    Image.fromarray(arr).save(path, **kw)


def write_dicom(
    path: str,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> None:
    """Writes a single-frame greyscale DICOM (uint8 or uint16 pixels) with pydicom."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[:, :, 0]
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_dicom: pixels must be uint8 or uint16, got {pixels.dtype}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 * pixels.dtype.itemsize
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _names(index: DatasetIndex, r: Record, allowed: list[str]) -> list[str]:
    names = [index.class_names[i] for i in np.flatnonzero(r.labels)]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"write: record {r.image_id!r} has classes {unknown} not in {allowed}")
    return names


def _one(index: DatasetIndex, r: Record) -> str:
    names = [index.class_names[i] for i in np.flatnonzero(r.labels)]
    if len(names) != 1:
        raise ValueError(f"write: record {r.image_id!r} of {index.name} needs exactly one label")
    return names[0]


def _all(index: DatasetIndex, *splits: str) -> list[tuple[str, Record]]:
    return [(s, r) for s in splits for r in index.splits.get(s, [])]


def _csv(path: str, header: list[str], rows: list[list], line_end: str = "\n") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator=line_end)
        w.writerow(header)
        w.writerows(rows)


def _chestxray14(index, images, out):
    entries, boxes, lists = [], [], {"train_val_list.txt": [], "test_list.txt": []}
    for k, (split, r) in enumerate(_all(index, "train", "val", "test")):
        pid = int(r.patient_id) if r.patient_id.isdigit() else k + 1
        name = r.image_id if r.image_id.endswith(".png") else f"{pid:08d}_{k:03d}.png"
        img = images(r)
        _save(img, os.path.join(out, f"images_{k // 4 + 1:03d}", "images", name))
        findings = [
            n for n in _names(index, r, chestxray14.class_names()) if n != chestxray14.NO_FINDING
        ]
        h, w = img.shape[:2]
        entries.append(
            [
                name,
                "|".join(findings) or chestxray14.NO_FINDING,
                0,
                pid,
                50,
                "M",
                "PA",
                w,
                h,
                0.143,
                0.143,
            ]
        )
        for b in r.boxes:
            label = index.class_names[b.label]
            boxes.append(
                [name, "Infiltrate" if label == "Infiltration" else label, b.x, b.y, b.w, b.h]
            )
        lists["test_list.txt" if split == "test" else "train_val_list.txt"].append(name)
    _csv(
        os.path.join(out, "Data_Entry_2017_v2020.csv"),
        [
            "Image Index",
            "Finding Labels",
            "Follow-up #",
            "Patient ID",
            "Patient Age",
            "Patient Gender",
            "View Position",
            "OriginalImage[Width",
            "Height]",
            "OriginalImagePixelSpacing[x",
            "y]",
        ],
        entries,
    )
    _csv(
        os.path.join(out, "BBox_List_2017.csv"),
        ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""],
        boxes,
    )
    for fname, names in lists.items():
        with open(os.path.join(out, fname), "w") as f:
            f.write("".join(n + "\n" for n in names))


def _odir(index, images, out):
    import openpyxl

    for split, (folder, xlsx) in odir.SETS.items():
        if split not in index.splits:
            continue
        patients: dict[str, dict[str, Record]] = {}
        for k, r in enumerate(index.splits[split]):
            pid = r.patient_id or f"p{k}"
            eye = r.meta.get("eye", "left")
            if eye in patients.setdefault(pid, {}):
                pid = f"{pid}_{k}"
            patients.setdefault(pid, {})[eye] = r
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(
            [
                "ID",
                "Patient Age",
                "Patient Sex",
                "Left-Fundus",
                "Right-Fundus",
                "Left-Diagnostic Keywords",
                "Right-Diagnostic Keywords",
                "N",
                "D",
                "G",
                "C",
                "A",
                "H",
                "M",
                "O",
            ]
        )
        for pid, eyes in patients.items():
            cells, union = {}, set()
            for eye in ("left", "right"):
                fname = f"{pid}_{eye}.jpg"
                if eye not in eyes:
                    cells[eye] = (fname, "no fundus image")
                    continue
                names = _names(index, eyes[eye], odir.CLASS_NAMES)
                union.update(names)
                cells[eye] = (
                    fname,
                    odir.FULL_WIDTH_COMMA.join(
                        ODIR_KEYWORDS[odir.CLASS_NAMES.index(n)] for n in names
                    ),
                )
                _save(
                    images(eyes[eye]), os.path.join(out, folder, "Images_crop", fname), quality=95
                )
            flags = [
                int(n in union)
                for n in (
                    "Normal",
                    "Diabetic retinopathy",
                    "Glaucoma",
                    "Cataract",
                    "AMD",
                    "Hypertensive retinopathy",
                    "Myopia",
                    "Other",
                )
            ]
            ws.append(
                [
                    pid,
                    60,
                    "Female",
                    cells["left"][0],
                    cells["right"][0],
                    cells["left"][1],
                    cells["right"][1],
                    *flags,
                ]
            )
        os.makedirs(os.path.join(out, folder, "Annotation"), exist_ok=True)
        wb.save(os.path.join(out, folder, "Annotation", xlsx))


def _covidx(index, images, out):
    files = {
        "train": covidx.DEFAULTS["covidx_train"],
        "test": covidx.DEFAULTS["covidx_test"],
        "val": "val_split.txt",
    }
    for split, fname in files.items():
        lines = []
        for k, r in enumerate(index.splits.get(split, [])):
            _save(images(r), os.path.join(out, split, r.image_id))
            pid = r.patient_id or str(k)
            # Alternate 3- and 4-field lines, as in test_COVIDx4.txt.
            source = "" if k % 2 else " " + (r.meta.get("source") or "rsna")
            lines.append(f"{pid} {r.image_id} {_one(index, r)}{source}\n")
        if lines:
            with open(os.path.join(out, fname), "w") as f:
                f.write("".join(lines))


def _isic(index, images, out):
    for split, tag in isic.SPLIT_DIRS.items():
        rows, meta = [], []
        for r in index.splits.get(split, []):
            name = _one(index, r)
            data_dir = os.path.join(out, f"ISIC-2017_{tag}_Data")
            img = images(r)
            _save(img, os.path.join(data_dir, f"{r.image_id}.jpg"), quality=95)
            _save(
                np.zeros(img.shape[:2] + (3,), np.uint8),
                os.path.join(data_dir, f"{r.image_id}_superpixels.png"),
            )
            rows.append(
                [r.image_id, float(name == "melanoma"), float(name == "seborrheic_keratosis")]
            )
            meta.append([r.image_id, "unknown", "unknown"])
            if r.concepts is not None:
                feats = {c: [0, int(r.concepts[i])] for i, c in enumerate(isic.CONCEPT_NAMES)}
                path = os.path.join(
                    out, f"ISIC-2017_{tag}_Part2_GroundTruth", f"{r.image_id}_features.json"
                )
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    json.dump(feats, f)
        if rows:
            _csv(
                os.path.join(out, f"ISIC-2017_{tag}_Part3_GroundTruth.csv"),
                ["image_id", "melanoma", "seborrheic_keratosis"],
                rows,
                line_end="\r\n",
            )
            _csv(
                os.path.join(out, f"ISIC-2017_{tag}_Data", f"ISIC-2017_{tag}_Data_metadata.csv"),
                ["image_id", "age_approximate", "sex"],
                meta,
            )


def _tbx11k(index, images, out):
    folders = {"healthy": ("health", "h"), "sick_non_tb": ("sick", "s"), "tb": ("tb", "tb")}
    os.makedirs(os.path.join(out, "lists"), exist_ok=True)
    os.makedirs(os.path.join(out, "annotations", "json"), exist_ok=True)
    count = 0
    for split, test_too in (("train", False), ("val", True)):
        lines, coco_images, anns = [], [], []
        for r in index.splits.get(split, []) + (index.splits.get("test", []) if test_too else []):
            folder, prefix = folders[_one(index, r)]
            count += 1
            rel = f"{folder}/{prefix}{count:04d}.png"
            _save(images(r), os.path.join(out, "imgs", rel))
            lines.append(rel + "\n")
            if folder == "tb":
                coco_images.append({"id": count, "file_name": rel, "width": 512, "height": 512})
                for b in r.boxes:
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": count,
                            "category_id": b.label + 1,
                            "bbox": [b.x, b.y, b.w, b.h],
                            "area": b.w * b.h,
                            "iscrowd": 0,
                        }
                    )
        with open(os.path.join(out, "lists", f"TBX11K_{split}.txt"), "w") as f:
            f.write("".join(lines))
        coco = {
            "images": coco_images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(tbx11k.CONCEPT_NAMES)],
        }
        with open(
            os.path.join(out, "annotations", "json", f"TBX11K_{split}_only_tb.json"), "w"
        ) as f:
            json.dump(coco, f)


def _vindr(index, images, out):
    rows = []
    for _, r in _all(index, "train", "val", "test"):
        img = np.asarray(images(r), np.uint8)
        write_dicom(os.path.join(out, "train", f"{r.image_id}.dicom"), img)
        names = _names(index, r, vindr.KAGGLE_CLASSES)
        for b in r.boxes:
            name = index.class_names[b.label]
            rows.append(
                [
                    r.image_id,
                    name,
                    vindr.KAGGLE_CLASSES.index(name),
                    "R1",
                    b.x,
                    b.y,
                    b.x + b.w,
                    b.y + b.h,
                ]
            )
        boxed = {index.class_names[b.label] for b in r.boxes}
        for name in names:
            if name == vindr.NO_FINDING:
                rows.append(
                    [r.image_id, name, vindr.KAGGLE_CLASSES.index(name), "R1", "", "", "", ""]
                )
            elif name not in boxed:
                raise ValueError(
                    f"write: VinDr record {r.image_id!r} has label {name!r} "
                    "without a box (every Kaggle finding row carries one)"
                )
    _csv(
        os.path.join(out, "train.csv"),
        ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"],
        rows,
    )


def _ddi(index, images, out):
    rows, concept_rows = [], []
    for k, (_, r) in enumerate(_all(index, "train", "val", "test")):
        _save(images(r), os.path.join(out, "images", r.image_id))
        malignant = _one(index, r) == "malignant"
        row = [
            k,
            k + 1,
            r.image_id,
            r.meta.get("skin_tone", "12"),
            str(malignant),
            r.meta.get("disease", "unknown"),
        ]
        rows.append(row)
        if r.concepts is not None:
            concept_rows.append(row[1:] + [int(c) for c in r.concepts])
    header = ["DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"]
    _csv(os.path.join(out, "ddi_metadata.csv"), [""] + header, rows)
    if concept_rows:
        _csv(
            os.path.join(out, "ddi_metadata_concept.csv"), header + ddi.CONCEPT_NAMES, concept_rows
        )


def _ham10000(index, images, out):
    rows = []
    for k, (_, r) in enumerate(_all(index, "train", "val", "test")):
        part = 1 + k % 2
        _save(
            images(r),
            os.path.join(out, f"HAM10000_images_part_{part}", f"{r.image_id}.jpg"),
            quality=95,
        )
        dx = ham10000.DX_CODES[ham10000.CLASS_NAMES.index(_one(index, r))]
        rows.append([r.patient_id or f"HAM_{k:07d}", r.image_id, dx, "histo", 50.0, "male", "back"])
    _csv(
        os.path.join(out, "HAM10000_metadata.csv"),
        ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
        rows,
    )


WRITERS = {
    "chestxray14": _chestxray14, "odir": _odir, "covidx": _covidx, "isic2017": _isic,
    "tbx11k": _tbx11k, "vindr": _vindr, "ddi": _ddi, "ham10000": _ham10000,
}  # fmt: skip


def write(like: str, index: DatasetIndex, images: ImageFn, out_dir: str) -> None:
    """Writes ``index`` (images from ``images(record)``, uint8 HxW[xC]) in ``like``'s layout."""
    if like not in WRITERS:
        raise ValueError(f"write: unknown dataset layout {like!r}; known: {sorted(WRITERS)}")
    os.makedirs(out_dir, exist_ok=True)
    WRITERS[like](index, images, out_dir)

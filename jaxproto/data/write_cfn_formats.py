"""Writes Harvard-FairVLMed and R2Gen MIMIC-CXR files in their published layouts (see
``jaxproto.data.fairvlmed`` and ``jaxproto.data.mimic_cxr``), so their loaders are tested end to
end on files shaped like the real ones. Not imported by the loaders."""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jaxproto.data import fairvlmed, mimic_cxr

FAIRVLMED_DIRS = {"train": "Training", "val": "Validation", "test": "Test"}


def write_fairvlmed(out: str, samples: Sequence[dict]) -> list[str]:
    """One ``<Split>/data_<id:05d>.npz`` per sample dict (``split``, ``id``, ``image`` uint8
    (H, W), ``glaucoma`` 0/1, ``note``; optional ``note_extra`` and demographics, default
    values as the release codes them); returns the npz paths."""
    paths = []
    for s in samples:
        folder = os.path.join(out, FAIRVLMED_DIRS[s["split"]])
        os.makedirs(folder, exist_ok=True)
        fields = {
            "slo_fundus": np.asarray(s["image"]),
            "md": np.float32(s.get("md", -1.5)),
            "tds": np.zeros(52, np.float32),
            "glaucoma": np.int64(s["glaucoma"]),
            "note": np.str_(s["note"]),
        }
        for i, k in enumerate(fairvlmed.DEMOGRAPHICS):
            fields[k] = np.float32(s.get(k, 60.0)) if k == "age" else np.int64(s.get(k, i % 2))
        if "note_extra" in s:
            fields["note_extra"] = np.str_(s["note_extra"])
        path = os.path.join(folder, f"data_{int(s['id']):05d}.npz")
        np.savez(path, **fields)
        paths.append(path)
    return paths


def write_mimic(out: str, samples: Sequence[dict], gz: bool = True) -> tuple[str, str]:
    """R2Gen's ``annotation.json``, ``images/p<xx>/p<subject>/s<study>/<id>.jpg`` and the
    MIMIC-CXR-JPG CheXpert table for sample dicts (``split``, ``id``, ``subject_id``,
    ``study_id``, ``report``, ``image`` uint8 (H, W), ``cells``: {CheXpert column: "1.0" |
    "0.0" | "-1.0" | ""}); returns (annotation path, label table path)."""
    ann: dict[str, list] = {s: [] for s in mimic_cxr.SPLITS}
    rows: dict[tuple[int, int], list] = {}
    for s in samples:
        sub, study = int(s["subject_id"]), int(s["study_id"])
        rel = f"p{str(sub)[:2]}/p{sub}/s{study}/{s['id']}.jpg"
        img_path = os.path.join(out, "images", rel)
        os.makedirs(os.path.dirname(img_path), exist_ok=True)
        Image.fromarray(np.asarray(s["image"], np.uint8)).save(img_path, quality=95)
        ann[s["split"]].append(
            {
                "id": s["id"], "study_id": study, "subject_id": sub, "report": s["report"],
                "image_path": [rel], "split": s["split"],
            }
        )  # fmt: skip
        cells = s.get("cells", {})
        rows[(sub, study)] = [sub, study, *(cells.get(c, "") for c in mimic_cxr.CHEXPERT_COLUMNS)]
    ann_path = os.path.join(out, "annotation.json")
    with open(ann_path, "w") as f:
        json.dump(ann, f)
    name = "mimic-cxr-2.0.0-chexpert.csv" + (".gz" if gz else "")
    label_path = os.path.join(out, name)
    with gzip.open(label_path, "wt", newline="") if gz else open(label_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id", *mimic_cxr.CHEXPERT_COLUMNS])
        w.writerows(rows[k] for k in sorted(rows))
    return ann_path, label_path

"""Reading a prepared dataset folder (written by ``jaxproto.data.prepare``).

``load_prepared_index(out_dir)`` returns the records of ``manifest.json`` with
``path = arrayrecord://<file>#<i>``, which ``images.load_image`` decodes; ``PreparedSource`` is a
grain random-access source over one split.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data.images import ARRAYRECORD_SCHEME, decode_bytes
from jaxproto.data.records import Box, DatasetIndex, Record

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(f"{path}: not found; run python -m jaxproto.data.prepare first")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}; re-run prepare"
        )
    return manifest


def load_prepared_index(out_dir: str) -> DatasetIndex:
    """The DatasetIndex of a prepared folder; images are read from its ArrayRecord files."""
    manifest = _read_manifest(out_dir)
    splits = {}
    for split, entry in manifest["splits"].items():
        file = os.path.abspath(os.path.join(out_dir, entry["file"]))
        splits[split] = [
            Record(
                image_id=m["image_id"],
                path=f"{ARRAYRECORD_SCHEME}{file}#{i}",
                labels=np.asarray(m["labels"], np.float32),
                boxes=tuple(Box(**b) for b in m["boxes"]),
                concepts=None if m["concepts"] is None else np.asarray(m["concepts"], np.float32),
                patient_id=m["patient_id"],
                size=None if m["size"] is None else tuple(m["size"]),
                meta={**m["meta"], "source_path": m["source_path"]},
            )
            for i, m in enumerate(entry["records"])
        ]
    return DatasetIndex(
        name=manifest["name"], class_names=manifest["class_names"], splits=splits,
        multilabel=manifest["multilabel"], background_class=manifest["background_class"],
        concept_names=manifest["concept_names"],
    )  # fmt: skip


class PreparedSource:
    """Grain random-access source over one prepared split: item i = {"image", "index"}."""

    def __init__(self, out_dir: str, split: str):
        manifest = _read_manifest(out_dir)
        if split not in manifest["splits"]:
            raise DataError(
                f"{out_dir}: no prepared split {split!r}; available {sorted(manifest['splits'])}"
            )
        self.path = os.path.abspath(os.path.join(out_dir, manifest["splits"][split]["file"]))
        self._len = len(manifest["splits"][split]["records"])
        self._reader = None

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < self._len:
            raise IndexError(f"PreparedSource: index {i} out of range [0, {self._len})")
        if self._reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            self._reader = ArrayRecordReader(self.path)
        data = self._reader.read([int(i)])[0]
        return {"image": decode_bytes(data, f"{self.path}#{i}"), "index": np.int64(i)}

    def __getstate__(self):
        return {**self.__dict__, "_reader": None}

    def __repr__(self) -> str:
        return f"PreparedSource(path={self.path!r}, len={self._len})"

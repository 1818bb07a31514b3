"""Decode and resize a dataset once into ArrayRecord files (the fast path for big datasets).

``prepare(data_cfg, out_dir, image_size)`` writes ``<split>.array_record`` (one PNG-encoded,
``image_size`` x ``image_size`` RGB image per record, in the index's order) and ``manifest.json``
(class names, concept names, background class and every record's metadata: labels, boxes in the
original pixels, concepts, patient id, original size). ``load_prepared_index(out_dir)`` returns
the same records with ``path = arrayrecord://<file>#<i>``, which ``images.load_image`` decodes;
``PreparedSource`` is a grain random-access source over one split.

CLI::

    python -m jaxproto.data.prepare --config configs/cipl_chestxray14.py[:arg] --out DIR
    python -m jaxproto.data.prepare --dataset chestxray14 --root /nih --image-size 512 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os

import cv2
import ml_collections
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data.images import ARRAYRECORD_SCHEME, decode_bytes, load_image
from jaxproto.data.records import BadSampleReport, Box, DatasetIndex, Record

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to ``size`` x ``size`` (the exact operation prepare applies)."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR).reshape(
        size, size, img.shape[2]
    )


def _record_meta(r: Record) -> dict:
    return {
        "image_id": r.image_id,
        "source_path": r.path,
        "labels": r.labels.tolist(),
        "boxes": [dataclasses.asdict(b) for b in r.boxes],
        "concepts": None if r.concepts is None else r.concepts.tolist(),
        "patient_id": r.patient_id,
        "size": None if r.size is None else list(r.size),
        "meta": r.meta,
    }


def prepare(data_cfg: ml_collections.ConfigDict, out_dir: str, image_size: int) -> str:
    """Writes the prepared copy of ``data_cfg``'s dataset; returns the manifest path."""
    from array_record.python.array_record_module import ArrayRecordWriter

    from jaxproto.data.registry import load_index

    if image_size <= 0:
        raise ValueError(f"prepare: image_size must be positive, got {image_size}")
    report = BadSampleReport(data_cfg.get("on_bad_sample", "error"))
    index = load_index(data_cfg, report)
    os.makedirs(out_dir, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION, "name": index.name, "image_size": image_size,
        "class_names": index.class_names, "multilabel": index.multilabel,
        "background_class": index.background_class, "concept_names": index.concept_names,
        "splits": {},
    }  # fmt: skip
    for split, records in index.splits.items():
        fname = f"{split}.array_record"
        writer = ArrayRecordWriter(os.path.join(out_dir, fname), "group_size:1")
        try:
            for r in records:
                img = load_image(r.path, channels=3)
                ok, png = cv2.imencode(".png", resize_image(img, image_size)[:, :, ::-1])
                if not ok:
                    raise DataError(f"{r.path}: PNG encoding failed")
                writer.write(png.tobytes())
        finally:
            writer.close()
        manifest["splits"][split] = {"file": fname, "records": [_record_meta(r) for r in records]}
        log.info("prepared %s/%s: %d images", index.name, split, len(records))
    path = os.path.join(out_dir, MANIFEST)
    with open(path, "w") as f:
        json.dump(manifest, f)
    if report.entries:
        report.write(out_dir)
    return path


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


def _config_from_file(path: str) -> ml_collections.ConfigDict:
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_prepare_config", file)
    if spec is None or spec.loader is None:
        raise ValueError(f"--config {file!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def main(argv: list[str] | None = None) -> None:
    from jaxproto.data.registry import default_data_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="configs/*.py[:arg]; uses its data block and image size")
    p.add_argument("--dataset", help="dataset name (without --config)")
    p.add_argument("--root", help="dataset folder (without --config, or to override it)")
    p.add_argument("--image-size", type=int, help="side of the stored square images")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    if args.config:
        config = _config_from_file(args.config)
        data_cfg = config.data
        size = args.image_size or data_cfg.get("image_size") or config.model.image_size
    elif args.dataset:
        data_cfg = default_data_config(args.dataset)
        size = args.image_size or data_cfg.image_size
    else:
        p.error("give --config or --dataset")
    if args.root:
        data_cfg.root = args.root
    if not data_cfg.get("root") and data_cfg.name != "synthetic":
        p.error("the dataset folder is unknown: give --root")
    logging.basicConfig(level=logging.INFO)
    path = prepare(data_cfg, args.out, int(size))
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()

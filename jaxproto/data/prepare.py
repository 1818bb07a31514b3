"""Decode and resize a dataset once into ArrayRecord files (the fast path for big datasets).

``prepare(data_cfg, out_dir, image_size)`` writes ``<split>.array_record`` (one PNG-encoded,
``image_size`` x ``image_size`` RGB image per record, in the index's order) and ``manifest.json``
(class names, concept names, background class and every record's metadata: labels, boxes in the
original pixels, concepts, patient id, original size). ``jaxproto.data.prepared`` reads it back.

CLI::

    python -m jaxproto.data.prepare --config configs/cipl_chestxray14.py[:arg] \\
        --config.data.root=/nih --out DIR
    python -m jaxproto.data.prepare --dataset chestxray14 --root /nih --image_size 512 --out DIR
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

import cv2
import ml_collections
import numpy as np

from jaxproto.common import cli
from jaxproto.common import config as config_lib
from jaxproto.common.errors import ConfigError, DataError
from jaxproto.data.images import load_image
from jaxproto.data.prepared import FORMAT_VERSION, MANIFEST
from jaxproto.data.records import BadSampleReport, Record
from jaxproto.data.registry import default_data_config, load_index

log = logging.getLogger(__name__)


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


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.data.prepare", config="optional")
    parser.add_argument("--dataset", help="dataset name (without --config)")
    parser.add_argument("--root", help="dataset folder (without --config, or to override it)")
    parser.add_argument("--image_size", type=int, help="side of the stored square images")
    parser.add_argument("--out", required=True, help="output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and prepares the dataset; returns 0 (mistakes raise ``UserError``)."""
    parser = build_parser()
    args = cli.parse(parser, argv)
    if args.config and args.dataset:
        parser.error("argument --dataset: not allowed with argument --config")
    if args.config:
        config = cli.load_config(args)
        data_cfg = config.data
        size = args.image_size or data_cfg.get("image_size") or config.model.image_size
    elif args.dataset:
        data_cfg = default_data_config(args.dataset)
        for key, value in args.overrides:
            if not key.startswith("data."):
                raise ConfigError(f"--config.{key}: with --dataset only --config.data.* applies")
            config_lib.apply_override(data_cfg, key[len("data.") :], value)
        size = args.image_size or data_cfg.image_size
    else:
        parser.error("give --config or --dataset")
    if args.root:
        data_cfg.root = args.root
    if not data_cfg.get("root") and data_cfg.name != "synthetic":
        raise ConfigError(
            f"the {data_cfg.name} dataset folder is unknown: give --root DIR or "
            "--config.data.root=DIR"
        )
    cli.output_dir(args.out)
    logging.basicConfig(level=logging.INFO)
    path = prepare(data_cfg, args.out, int(size))
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

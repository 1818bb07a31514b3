"""Predict with an exported (or training-workdir) model on image files.

  python -m jaxproto.predict --export exports/demo --images a.png b.dcm scans/ --out preds.csv

One CSV row per image with the method's columns (classifiers: per-class probabilities), and
beside it the method's per-image arrays as ``<out stem>_<name>.npy`` (X-MIR:
``preds_embedding.npy``, one L2-normalised embedding per CSV row). ``--images`` takes files,
folders (expanded to the PNG, JPEG and DICOM files inside, recursively) and ``.txt`` lists.
An unreadable image stops the run with its name before anything is written, unless
``--skip_bad`` is given: then it is reported (log and ``<out stem>_skipped.json``) and every
other image is still written.

Foreign input is flagged, not diagnosed: ``<out stem>_ood.csv`` has one row per CSV row with
``in_distribution`` (false for an image too small to be a medical image, a DICOM whose Modality
or BodyPartExamined is not what the model was trained on, or an image whose features are
farther from the training set than the export's threshold), ``ood_reason`` and, for exports with
OOD statistics, ``ood_score`` (Mahalanobis distance; see ``python -m jaxproto.export``).
``--reject_ood`` leaves such images out like bad files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.common.errors import UserError
from jaxproto.core import logging as log_lib
from jaxproto.core import ood, prediction
from jaxproto.core.method import Method
from jaxproto.data.images import expand_image_paths

log = logging.getLogger("jaxproto.predict")


def write_outputs(
    out_csv: str,
    method: Method,
    paths: Sequence[str],
    preds: dict[str, np.ndarray],
    skipped: Sequence[tuple[str, str]],
    flags: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Writes the CSV, the method's arrays and the skipped list (each under a temporary name,
    renamed when complete); returns the written files."""
    stem = os.path.splitext(out_csv)[0]
    _write_csv(out_csv, paths, method.prediction_columns(preds))
    written = [out_csv]
    if flags:
        _write_csv(stem + "_ood.csv", paths, flags)
        written.append(stem + "_ood.csv")
    for name, array in method.prediction_arrays(preds).items():
        path = f"{stem}_{name}.npy"
        with cli.atomic_write(path, "wb") as f:
            np.save(f, array)
        written.append(path)
    if skipped:
        path = stem + "_skipped.json"
        with cli.atomic_write(path) as f:
            json.dump([{"image": p, "error": e} for p, e in skipped], f, indent=1)
        written.append(path)
    return written


def _write_csv(path: str, paths: Sequence[str], columns: dict[str, np.ndarray]) -> None:
    with cli.atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *columns])
        for i, image in enumerate(paths):
            writer.writerow([image, *(_cell(values[i]) for values in columns.values())])


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{value:.6f}"
    return str(value.item() if isinstance(value, np.generic) else value)


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.predict")
    cli.exclusive_source(parser)
    parser.add_argument(
        "--images",
        nargs="+",
        action="extend",
        required=True,
        metavar="FILE_OR_DIR",
        help="image files, folders or .txt lists (several; the flag may repeat)",
    )
    parser.add_argument("--out", default="predictions.csv", help="output CSV")
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    parser.add_argument(
        "--skip_bad", action="store_true", help="skip unreadable images instead of stopping"
    )
    parser.add_argument(
        "--reject_ood",
        action="store_true",
        help="leave out-of-distribution images out (listed in <out stem>_skipped.json)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    cli.output_file(args.out)
    paths = expand_image_paths(args.images)
    log_lib.setup_logging()
    config, method, state = inference.load_for_inference(args.workdir, args.export)
    kept, preds, skipped = prediction.predict_files(
        method, state, paths, args.batch_size, args.skip_bad
    )
    if not kept:
        raise UserError(f"none of the {len(paths)} images could be read")
    flags = ood.flags(kept, preds, ood.stats_for(args.export, config))
    if not flags["in_distribution"].all():
        log.warning(
            "%d of %d images look out of distribution (in_distribution=false)",
            int((~flags["in_distribution"]).sum()),
            len(kept),
        )
    if args.reject_ood:
        keep = flags["in_distribution"]
        skipped += [
            (p, f"out of distribution: {r}")
            for p, r, k in zip(kept, flags["ood_reason"], keep, strict=True)
            if not k
        ]
        kept = [p for p, k in zip(kept, keep, strict=True) if k]
        preds = {k: v[keep] for k, v in preds.items()}
        flags = {k: v[keep] for k, v in flags.items()}
        if not kept:
            raise UserError(f"all {len(keep)} readable images are out of distribution")
    for path in write_outputs(args.out, method, kept, preds, skipped, flags):
        log.info("wrote %s", path)
    if skipped:
        log.warning(
            "%d of %d images skipped (listed in the _skipped.json file)", len(skipped), len(paths)
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

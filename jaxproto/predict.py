"""Predict with an exported (or training-workdir) model on image files.

  python -m jaxproto.predict --export exports/demo --images a.png b.dcm scans/ --out preds.csv

One CSV row per image with the method's columns (classifiers: per-class probabilities), and
beside it the method's per-image arrays as ``<out stem>_<name>.npy`` (X-MIR:
``preds_embedding.npy``, one L2-normalised embedding per CSV row). ``--images`` takes files,
folders (expanded to the PNG, JPEG and DICOM files inside, recursively) and ``.txt`` lists.
An unreadable image stops the run with its name before anything is written, unless
``--skip_bad`` is given: then it is reported (log and ``<out stem>_skipped.json``) and every
other image is still written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.common.errors import DataError, UserError
from jaxproto.core import logging as log_lib
from jaxproto.core.logging import Progress
from jaxproto.core.method import Method, State
from jaxproto.data.images import expand_image_paths
from jaxproto.data.records import Record

log = logging.getLogger("jaxproto.predict")


def predict_files(
    method: Method, state: State, paths: Sequence[str], batch_size: int, skip_bad: bool
) -> tuple[list[str], dict[str, np.ndarray], list[tuple[str, str]]]:
    """(kept paths, stacked predictions, skipped [(path, reason)]) for ``paths``."""
    predict = jax.jit(method.predict)
    n_classes = len(method.class_names())
    kept, skipped, parts = [], [], {}
    progress = Progress(len(paths), 0, "predict", 1)
    for start in range(0, len(paths), batch_size):
        examples, names = [], []
        for path in paths[start : start + batch_size]:
            record = Record(os.path.basename(path), path, np.zeros((n_classes,), np.float32))
            try:
                examples.append(method.eval_example(record))
            except (DataError, OSError) as e:
                if not skip_bad:
                    raise UserError(f"{path}: {e} (use --skip_bad to skip it)") from None
                log.warning("skipping %s: %s", path, e)
                skipped.append((path, str(e)))
                continue
            names.append(path)
        progress.update(min(start + batch_size, len(paths)))
        if not examples:
            continue
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        out = jax.device_get(predict(state, batch))
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
        kept.extend(names)
    progress.close()
    return kept, {k: np.concatenate(v) for k, v in parts.items()}, skipped


def write_outputs(
    out_csv: str,
    method: Method,
    paths: Sequence[str],
    preds: dict[str, np.ndarray],
    skipped: Sequence[tuple[str, str]],
) -> list[str]:
    """Writes the CSV, the method's arrays and the skipped list (each under a temporary name,
    renamed when complete); returns the written files."""
    stem = os.path.splitext(out_csv)[0]
    columns = method.prediction_columns(preds)
    with cli.atomic_write(out_csv, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *columns])
        for i, path in enumerate(paths):
            writer.writerow([path, *(_cell(values[i]) for values in columns.values())])
    written = [out_csv]
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


def _cell(value) -> str:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be positive, got {args.batch_size}")
    cli.output_file(args.out)
    paths = expand_image_paths(args.images)
    log_lib.setup_logging()
    _, method, state = inference.load_for_inference(args.workdir, args.export)
    kept, preds, skipped = predict_files(method, state, paths, args.batch_size, args.skip_bad)
    if not kept:
        raise UserError(f"none of the {len(paths)} images could be read")
    for path in write_outputs(args.out, method, kept, preds, skipped):
        log.info("wrote %s", path)
    if skipped:
        log.warning(
            "%d of %d images skipped (listed in the _skipped.json file)", len(skipped), len(paths)
        )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

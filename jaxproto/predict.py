"""Predict with an exported (or training-workdir) model on image files.

  python -m jaxproto.predict --export exports/demo --images a.png b.dcm scans/ --out preds.csv

Classifiers: one CSV row per image with per-class probabilities. Retrieval models (X-MIR):
also ``<out stem>_embeddings.npy`` with one L2-normalised embedding per row of the CSV.
Folders are expanded to the images they contain (PNG, JPEG, DICOM). An unreadable image stops
the run with its name, unless ``--skip-bad`` is given: then it is reported (log and
``<out stem>_skipped.json``) and every other image is still written.
"""

from __future__ import annotations

import csv
import json
import logging
import os

import numpy as np
from absl import flags

from jaxproto.common import cli
from jaxproto.common.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")

log = logging.getLogger("jaxproto.predict")


def expand_images(items: list[str]) -> list[str]:
    """Files as given, folders expanded (sorted) to the images inside them."""
    out = []
    for item in items:
        if os.path.isdir(item):
            for root, _, files in sorted(os.walk(item)):
                out.extend(
                    os.path.join(root, f)
                    for f in sorted(files)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                )
        else:
            out.append(item)
    if not out:
        raise UserError("no images given (--images FILE_OR_DIR ...)")
    return out


def predict_files(method, state, paths: list[str], batch_size: int, skip_bad: bool):
    """(kept paths, stacked predictions, skipped [(path, reason)]) for ``paths``."""
    import jax

    from jaxproto.common.errors import DataError
    from jaxproto.core.logging import Progress
    from jaxproto.data.records import Record

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


def write_outputs(out_csv: str, method, paths, preds, skipped) -> list[str]:
    """Writes the CSV (+ embeddings .npy, skipped list); returns the written files."""
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    stem = os.path.splitext(out_csv)[0]
    written = [out_csv]
    columns = []
    probs = preds.get("probs")
    if probs is not None:
        names = method.class_names()
        if probs.shape[1] != len(names):
            bg = method.index.background_class
            names = [n for i, n in enumerate(names) if i != bg]
        columns = names
    with open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *columns])
        for i, path in enumerate(paths):
            row = [path] + ([f"{p:.6f}" for p in probs[i]] if probs is not None else [])
            writer.writerow(row)
    if "embeddings" in preds:
        np.save(stem + "_embeddings.npy", preds["embeddings"])
        written.append(stem + "_embeddings.npy")
    if skipped:
        with open(stem + "_skipped.json", "w") as f:
            json.dump([{"image": p, "error": e} for p, e in skipped], f, indent=1)
        written.append(stem + "_skipped.json")
    return written


def main(argv):
    del argv
    from jaxproto.core import logging as log_lib
    from jaxproto.core import restore

    log_lib.setup_logging()
    _, method, state = restore.load_for_inference(flags.FLAGS.workdir, flags.FLAGS.export)
    paths = expand_images(flags.FLAGS.images)
    kept, preds, skipped = predict_files(
        method, state, paths, flags.FLAGS.batch_size, flags.FLAGS.skip_bad
    )
    if not kept:
        raise UserError("no image could be read")
    for path in write_outputs(flags.FLAGS.out, method, kept, preds, skipped):
        log.info("wrote %s", path)
    if skipped:
        log.warning(
            "%d of %d images skipped (listed in the _skipped.json file)", len(skipped), len(paths)
        )


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so modules import cleanly)."""
    flags.DEFINE_string("export", None, "Export folder.")
    flags.DEFINE_string("workdir", None, "Training workdir (instead of --export).")
    flags.DEFINE_multi_string("images", [], "Image files or folders (repeatable).")
    flags.DEFINE_string("out", "predictions.csv", "Output CSV.")
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
    flags.DEFINE_bool("skip_bad", False, "Skip unreadable images instead of stopping.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)

"""Export a trained model as a self-contained folder for evaluation, prediction and sharing.

  python -m jaxproto.export --workdir runs/demo --out exports/demo [--checkpoint best|latest]

The export holds params, batch_stats and extra state (no optimizer state) as msgpack, the
resolved config, the dataset's class names, the preprocessing, a format version and a SHA-256
checksum over everything; ``read_export`` refuses tampered or newer-format exports.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import flax.serialization
import jax
import ml_collections
import numpy as np
from absl import flags

from jaxproto.common.errors import UserError

FORMAT_VERSION = 1
FILES = ("variables.msgpack", "config.json", "dataset.json")


class ExportError(UserError, ValueError):
    """An export folder that cannot be used as it is."""


def _sha256(folder: str) -> str:
    h = hashlib.sha256()
    for name in FILES:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode())
            h.update(f.read())
    return h.hexdigest()


def write_export(out: str, config: ml_collections.ConfigDict, dataset_meta: dict, state) -> str:
    """Writes the export folder; returns the manifest path."""
    from jaxproto import __version__
    from jaxproto.common import config as config_lib

    os.makedirs(out, exist_ok=True)
    host = jax.tree.map(np.asarray, {k: state[k] for k in ("params", "batch_stats", "extra")})
    with open(os.path.join(out, "variables.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(host))
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(dataset_meta, f, indent=1)
    manifest = {
        "format_version": FORMAT_VERSION,
        "jaxproto_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "method": config.method,
        "class_names": dataset_meta["class_names"],
        "preprocessing": {
            "image_size": int(config.model.image_size),
            "channels": 3,
            "resize": "bilinear",
            "normalize_mean": [0.485, 0.456, 0.406],
            "normalize_std": [0.229, 0.224, 0.225],
        },
        "sha256": _sha256(out),
    }
    path = os.path.join(out, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    return path


def read_export(folder: str):
    """(config, dataset_meta, state) from an export folder, after checking it."""
    manifest_path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise ExportError(f"{folder}: no manifest.json — not a jaxproto export")
    with open(manifest_path) as f:
        manifest = json.load(f)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(
            f"{folder}: export format version {version} is newer than this jaxproto supports "
            f"({FORMAT_VERSION}); upgrade jaxproto"
        )
    missing = [n for n in FILES if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ExportError(f"{folder}: missing {', '.join(missing)}")
    if _sha256(folder) != manifest.get("sha256"):
        raise ExportError(
            f"{folder}: checksum mismatch — the export was modified after it was written"
        )
    with open(os.path.join(folder, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(folder, "dataset.json")) as f:
        meta = json.load(f)
    with open(os.path.join(folder, "variables.msgpack"), "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())
    for key in ("params", "batch_stats", "extra"):
        state.setdefault(key, {})
    return config, meta, state


def main(argv):
    del argv
    from jaxproto.core import logging as log_lib
    from jaxproto.core import restore, workdir

    log_lib.setup_logging()
    if not flags.FLAGS.workdir or not flags.FLAGS.out:
        raise UserError("--workdir and --out are required")
    config, _, state = restore.load_for_inference(
        workdir=flags.FLAGS.workdir, which=flags.FLAGS.checkpoint
    )
    meta = workdir.read_dataset_meta(flags.FLAGS.workdir)
    path = write_export(flags.FLAGS.out, config, meta, state)
    import logging

    logging.getLogger("jaxproto.export").info("wrote %s", path)


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so modules import cleanly)."""
    flags.DEFINE_string("workdir", None, "Training workdir to export.")
    flags.DEFINE_string("out", None, "Export folder to write.")
    flags.DEFINE_enum(
        "checkpoint",
        "best",
        ["best", "latest"],
        "Which checkpoint: best by train.best_metric (falls back to latest).",
    )


if __name__ == "__main__":
    define_flags()
    from jaxproto.common import cli

    cli.run(main)

"""Models for inference: load a workdir checkpoint or an export folder; write and read exports.

An export holds params, batch_stats and extra state (no optimizer state) as msgpack, the
resolved config, the dataset's class names, the preprocessing, a format version and a SHA-256
checksum over everything; ``read_export`` refuses tampered or newer-format exports. When the
workdir has them, the export also carries the operating thresholds (``thresholds.json``, see
``save_thresholds``) and the method's evidence files (``Method.export_files``: CIPL's prototype
atlas), listed in the manifest's ``extra_files`` and covered by the checksum. Exports written
without them still load (no decisions; the pages say so).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import flax.serialization
import jax
import ml_collections
import numpy as np

from jaxproto import __version__
from jaxproto.common import config as config_lib
from jaxproto.common.errors import CheckpointError
from jaxproto.core import checkpoint as ckpt_lib
from jaxproto.core import parallel, protocol, trainer
from jaxproto.core import workdir as workdir_lib
from jaxproto.core.method import THRESHOLDS_FILE, Method, State
from jaxproto.data import registry
from jaxproto.data.records import BadSampleReport
from jaxproto.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxproto.methods import build_method

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILES = ("variables.msgpack", "config.json", "dataset.json")

IncompleteWorkdir = ckpt_lib.IncompleteWorkdir


class ExportError(CheckpointError):
    """An export folder that cannot be used as it is."""


def load_for_inference(
    workdir: str | None = None, export: str | None = None, which: str = "best"
) -> tuple[ml_collections.ConfigDict, Method, State]:
    """(config, method, {"params", "batch_stats", "extra"}) from a workdir or an export.

    ``which`` picks the workdir checkpoint: "best" (falls back to the latest when no best was
    tracked) or "latest".
    """
    if (workdir is None) == (export is None):
        raise CheckpointError("give exactly one of --workdir or --export")
    if export is not None:
        config, meta, state = read_export(export)
        digest = config_lib.read_json(os.path.join(export, "manifest.json"), ExportError)["sha256"]
        provenance = {"source": export, "kind": "export", "id": f"export sha256 {digest[:12]}"}
        folder = export
    else:
        if not os.path.isdir(workdir):
            raise IncompleteWorkdir(f"workdir {workdir!r} does not exist")
        config = workdir_lib.latest_config(workdir)
        meta = workdir_lib.read_dataset_meta(workdir)
        state, step = ckpt_lib.restore_for_inference(workdir, which)
        log.info("restored %s checkpoint at step %d from %s", which, step, workdir)
        provenance = {
            "source": workdir,
            "kind": "workdir",
            "id": f"{which} checkpoint, step {step}",
        }
        folder = workdir
    method = build_method(config, workdir_lib.index_from_meta(meta))
    method.thresholds = read_thresholds(folder)
    provenance["selection"] = protocol.note(config, provenance["id"])
    method.provenance = provenance
    state = jax.tree.map(jax.numpy.asarray, state)
    return config, method, state


def read_thresholds(folder: str) -> dict | None:
    """The operating thresholds saved in a workdir or export, or None when there are none."""
    path = os.path.join(folder, THRESHOLDS_FILE)
    if not os.path.isfile(path):
        return None
    data = config_lib.read_json(path, CheckpointError)
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        raise CheckpointError(f"{path}: expected {{'split', 'criterion', 'classes': {{...}}}}")
    return data


def save_thresholds(workdir: str, which: str = "best") -> str | None:
    """Chooses the operating thresholds of a trained workdir and writes
    ``<workdir>/thresholds.json``: ``Method.operating_thresholds`` on the validation split
    when the dataset has one, else on ``train.eval_split`` (the file names the split). Returns
    the path, or None for a method without class probabilities (e.g. X-MIR)."""
    config, method, state = load_for_inference(workdir=workdir, which=which)
    index = registry.load_index(config.data, BadSampleReport(config.data.on_bad_sample))
    method.index = index
    split = "val" if index.splits.get("val") else str(config.train.eval_split)
    records = index.split(split)
    mesh = parallel.make_mesh(config.mesh)
    state = jax.device_put(state, parallel.tree_shardings(state, mesh, config.mesh.rules))
    stream = trainer.stream_predictions(method, mesh, state, records, config.train.eval_batch_size)
    preds = trainer.collect_predictions(stream, len(records))
    thresholds = method.operating_thresholds(preds, records, split)
    if thresholds is None:
        return None
    path = os.path.join(workdir, THRESHOLDS_FILE)
    if jax.process_index() == 0:
        with open(path + ".tmp", "w") as f:
            json.dump({**thresholds, "checkpoint": which}, f, indent=1)
        os.replace(path + ".tmp", path)
    log.info("operating thresholds (%s split) -> %s", split, path)
    return path


def _sha256(folder: str, names) -> str:
    h = hashlib.sha256()
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode())
            h.update(f.read())
    return h.hexdigest()


def _export_extras(method: Method, workdir: str | None) -> dict[str, str]:
    """{name in the export: file in the workdir} of what an export carries besides the model."""
    if workdir is None:
        return {}
    extras = dict(method.export_files(workdir))
    if os.path.isfile(os.path.join(workdir, THRESHOLDS_FILE)):
        extras[THRESHOLDS_FILE] = os.path.join(workdir, THRESHOLDS_FILE)
    return extras


def write_export(
    out: str,
    config: ml_collections.ConfigDict,
    dataset_meta: dict,
    state,
    workdir: str | None = None,
    written: Sequence[str] = (),
) -> str:
    """Writes the export folder (with ``workdir``'s thresholds and the method's evidence files
    when given); the state and config pass through ``Method.export_state`` first. ``written``:
    files the caller already put in ``out`` (e.g. ``ood.json``), listed and checksummed with
    the rest. Returns the manifest path."""
    os.makedirs(out, exist_ok=True)
    method = build_method(config, workdir_lib.index_from_meta(dataset_meta))
    host = jax.tree.map(np.asarray, {k: state[k] for k in ckpt_lib.INFERENCE_KEYS})
    host, config = method.export_state(host, config)
    with open(os.path.join(out, "variables.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(host))
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(dataset_meta, f, indent=1)
    extras = _export_extras(method, workdir)
    for name, src in sorted(extras.items()):
        os.makedirs(os.path.dirname(os.path.join(out, name)) or out, exist_ok=True)
        shutil.copyfile(src, os.path.join(out, name))
    extra_names = sorted({*extras, *written})
    names = [*FILES, *extra_names]
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
            "normalize_mean": [float(v) for v in IMAGENET_MEAN],
            "normalize_std": [float(v) for v in IMAGENET_STD],
        },
        "extra_files": extra_names,
        "sha256": _sha256(out, names),
    }
    path = os.path.join(out, "manifest.json")
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    return path


def read_export(folder: str) -> tuple[ml_collections.ConfigDict, dict, dict]:
    """(config, dataset_meta, state) from an export folder, after checking it."""
    manifest_path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise ExportError(f"{folder}: no manifest.json — not a jaxproto export")
    manifest = config_lib.read_json(manifest_path, ExportError)
    if not isinstance(manifest, dict):
        raise ExportError(f"{manifest_path}: expected a JSON object (an export manifest)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(
            f"{folder}: export format version {version} is newer than this jaxproto supports "
            f"({FORMAT_VERSION}); upgrade jaxproto"
        )
    names = [*FILES, *manifest.get("extra_files", [])]
    unsafe = [n for n in names if os.path.isabs(n) or ".." in n.split("/")]
    if unsafe:
        raise ExportError(f"{folder}: manifest lists files outside the export: {unsafe}")
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise ExportError(f"{folder}: missing {', '.join(missing)}")
    if _sha256(folder, names) != manifest.get("sha256"):
        raise ExportError(
            f"{folder}: checksum mismatch — the export was modified after it was written"
        )
    saved = config_lib.read_json(os.path.join(folder, "config.json"), ExportError)
    if not isinstance(saved, dict):
        raise ExportError(f"{folder}/config.json: expected a JSON object (a saved config)")
    config = ml_collections.ConfigDict(config_lib.with_added_keys(saved))
    meta = config_lib.read_json(os.path.join(folder, "dataset.json"), ExportError)
    with open(os.path.join(folder, "variables.msgpack"), "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())
    for key in ckpt_lib.INFERENCE_KEYS:
        state.setdefault(key, {})
    return config, meta, state

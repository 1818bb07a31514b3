"""Load a trained model for inference from a workdir (checkpoint) or an export folder."""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxproto.common import config as config_lib
from jaxproto.core import workdir as workdir_lib
from jaxproto.core.method import Method, State

log = logging.getLogger(__name__)

INFERENCE_KEYS = ("params", "batch_stats", "extra")


class IncompleteWorkdir(FileNotFoundError):
    """The workdir lacks a file or checkpoint that inference needs."""


def _restore_checkpoint(workdir: str, which: str) -> tuple[dict, int]:
    sub = {"best": "best", "latest": "ckpt"}[which]
    root = os.path.abspath(workdir)  # orbax only opens absolute paths
    path = os.path.join(root, sub)
    if which == "best" and not _has_steps(path):
        path = os.path.join(root, "ckpt")
    if not _has_steps(path):
        raise IncompleteWorkdir(
            f"{workdir}: no finished checkpoint under ckpt/ or best/ (did training save one?)"
        )
    mngr = ocp.CheckpointManager(path, item_names=("state", "data_iter", "meta"))
    step = mngr.latest_step()
    # No target tree: take whatever was saved; arrays land on this process's first device
    # even when the checkpoint was written by another mesh or number of processes.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=local)),
    )
    mngr.close()
    state = restored["state"]
    return {k: state.get(k, {}) for k in INFERENCE_KEYS}, step


def _has_steps(path: str) -> bool:
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def load_for_inference(
    workdir: str | None = None, export: str | None = None, which: str = "best"
) -> tuple[ml_collections.ConfigDict, Method, State]:
    """(config, method, {"params", "batch_stats", "extra"}) from a workdir or an export.

    ``which`` picks the workdir checkpoint: "best" (falls back to the latest when no best was
    tracked) or "latest".
    """
    from jaxproto.core.trainer import build_method

    if (workdir is None) == (export is None):
        raise ValueError("give exactly one of --workdir or --export")
    if export is not None:
        from jaxproto.export import read_export

        config, meta, state = read_export(export)
    else:
        if not os.path.isdir(workdir):
            raise IncompleteWorkdir(f"workdir {workdir!r} does not exist")
        config = config_lib.load_saved_config(workdir)
        meta = workdir_lib.read_dataset_meta(workdir)
        state, step = _restore_checkpoint(workdir, which)
        log.info("restored %s checkpoint at step %d from %s", which, step, workdir)
    method = build_method(config, workdir_lib.index_from_meta(meta))
    state = jax.tree.map(jax.numpy.asarray, state)
    return config, method, state

"""Checkpoints with orbax: the last K in ``<workdir>/ckpt``, the best in ``<workdir>/best``.

A checkpoint holds the whole train state (params, batch_stats, optimizer states, extra state
such as EMA, step, RNG), the grain iterator state of the running phase and a JSON ``meta`` record
(phase index, step within the phase, best metric so far). Restores reshard onto the current mesh.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

from jaxproto.common import config as config_lib
from jaxproto.common.errors import CheckpointError
from jaxproto.core import workdir as workdir_lib

log = logging.getLogger(__name__)


def _abstract(state_like, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_like, shardings
    )


class Checkpointer:
    """Latest-K and best checkpoints of one workdir."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        # Distinct barrier prefixes: orbax names its multi-process "async write complete"
        # barrier after the step, so a best and a latest save of the same step (the end of a
        # phase) would otherwise collide across processes.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(1, keep),
            create=True,
            enable_async_checkpointing=async_save,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix="latest"
            ),
        )
        self.latest = ocp.CheckpointManager(
            os.path.join(self.workdir, "ckpt"),
            item_names=("state", "data_iter", "meta"),
            options=options,
        )
        best_options = ocp.CheckpointManagerOptions(
            max_to_keep=1,
            create=True,
            enable_async_checkpointing=async_save,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix="best"
            ),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(self.workdir, "best"), item_names=("state", "meta"), options=best_options
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state, meta: dict, data_iter=None) -> None:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self.latest.save(step, args=ocp.args.Composite(**items), force=True)

    def save_best(self, step: int, state, meta: dict) -> None:
        self.best.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore_meta(self, step: int | None = None, best: bool = False) -> dict:
        mngr = self.best if best else self.latest
        step = mngr.latest_step() if step is None else step
        out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def has_data_iter(self, step: int) -> bool:
        """True when the step holds a grain iterator state for this process layout."""
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return os.path.isfile(os.path.join(self.workdir, "ckpt", str(step), "data_iter", name))

    def restore(self, step, state_like, shardings, data_iter=None, best: bool = False):
        """Restores (state, meta) into ``state_like``'s structure with ``shardings``; fills
        ``data_iter`` in place when given."""
        mngr = self.best if best else self.latest
        items = {
            "state": ocp.args.StandardRestore(_abstract(state_like, shardings)),
            "meta": ocp.args.JsonRestore(),
        }
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = mngr.restore(step, args=ocp.args.Composite(**items))
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def write_initial_checkpoint(workdir: str, config, state, dataset_meta: dict) -> None:
    """Makes ``workdir`` a complete, evaluable jaxproto workdir from a converted state
    (e.g. an imported official checkpoint): config.json, dataset.json and a checkpoint
    marked as finished training."""
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_config(config, workdir)
    workdir_lib.write_dataset_meta(workdir, dataset_meta)
    ckpt = Checkpointer(workdir, keep=1, async_save=False)
    step = int(state.get("step", 0))
    ckpt.save(step, state, {"phase_index": 10**6, "step_in_phase": 0, "finished": True})
    ckpt.close()


INFERENCE_KEYS = ("params", "batch_stats", "extra")


class IncompleteWorkdir(CheckpointError, FileNotFoundError):
    """The workdir lacks a file or checkpoint that inference needs."""


def _has_steps(path: str) -> bool:
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def restore_for_inference(workdir: str, which: str = "best") -> tuple[dict, int]:
    """({"params", "batch_stats", "extra"} on this process's first device, step) from the
    workdir's "best" checkpoint (the latest when no best was tracked) or its "latest" one,
    whatever mesh or number of processes wrote it."""
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
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=local)),
    )
    mngr.close()
    state = restored["state"]
    return {k: state.get(k, {}) for k in INFERENCE_KEYS}, step

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
        if jax.process_index() == 0:
            for sub in ("ckpt", "best"):
                quarantine_damaged(os.path.join(self.workdir, sub))
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
        try:
            out = mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # TensorStore/orbax errors on damaged files
            where = os.path.join(str(mngr.directory), str(step))
            raise CheckpointError(
                f"checkpoint {where} is damaged ({_first_line(e)}); rename it to "
                f"{step}.damaged to resume from the step before"
            ) from None
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


# Files every finished step folder holds (orbax: the step's and each item's metadata).
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def step_problem(step_dir: str) -> str | None:
    """Why a step folder is not a complete checkpoint (a missing file), or None."""
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(step_dir, name)):
            return f"{name} is missing"
    data = os.path.join(step_dir, "state", "d")
    if os.path.isdir(data) and not os.listdir(data):
        return "state/d is empty"
    return None


def _steps(path: str) -> list[int]:
    """Step numbers under ``path``, newest first."""
    if not os.path.isdir(path):
        return []
    return sorted((int(n) for n in os.listdir(path) if n.isdigit()), reverse=True)


def quarantine_damaged(path: str) -> list[int]:
    """Renames half-written or half-deleted step folders under ``path`` to ``<step>.damaged``
    (kept, not deleted; orbax ignores them), so a resume starts from the newest intact step.
    Returns the damaged steps."""
    damaged = []
    for step in _steps(path):
        problem = step_problem(os.path.join(path, str(step)))
        if problem is None:
            continue
        target = os.path.join(path, f"{step}.damaged")
        n = 1
        while os.path.exists(target):
            target, n = os.path.join(path, f"{step}.damaged{n}"), n + 1
        os.rename(os.path.join(path, str(step)), target)
        intact = [s for s in _steps(path) if step_problem(os.path.join(path, str(s))) is None]
        log.warning(
            "checkpoint %s/%d is damaged (%s): moved to %s; %s",
            path,
            step,
            problem,
            os.path.basename(target),
            f"the newest intact step is {intact[0]}" if intact else "no intact step is left",
        )
        damaged.append(step)
    return damaged


def _has_steps(path: str) -> bool:
    return bool(_steps(path))


def _restore_newest_intact(path: str, problems: list[str]) -> tuple[dict, int] | None:
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    mngr = ocp.CheckpointManager(path, item_names=("state", "data_iter", "meta"))
    try:
        for step in _steps(path):
            where = os.path.join(path, str(step))
            problem = step_problem(where)
            if problem is None:
                try:
                    restored = mngr.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(fallback_sharding=local)
                        ),
                    )
                    if problems:
                        log.warning("damaged: %s; using %s", "; ".join(problems), where)
                    return restored["state"], step
                except Exception as e:  # TensorStore/orbax errors on damaged files
                    problem = _first_line(e)
            problems.append(f"{where} ({problem})")
            log.warning("checkpoint %s is damaged (%s); trying the step before", where, problem)
    finally:
        mngr.close()
    return None


def restore_for_inference(workdir: str, which: str = "best") -> tuple[dict, int]:
    """({"params", "batch_stats", "extra"} on this process's first device, step) from the
    workdir's "best" checkpoint (the latest when no best was tracked) or its "latest" one,
    whatever mesh or number of processes wrote it. A damaged step is reported and the newest
    intact one (of best/, then ckpt/) is used; CheckpointError when none is intact."""
    root = os.path.abspath(workdir)  # orbax only opens absolute paths
    subs = ("best", "ckpt") if which == "best" else ("ckpt",)
    candidates = [os.path.join(root, s) for s in subs if _has_steps(os.path.join(root, s))]
    if not candidates:
        raise IncompleteWorkdir(
            f"{workdir}: no finished checkpoint under ckpt/ or best/ (did training save one?)"
        )
    problems: list[str] = []
    for path in candidates:
        found = _restore_newest_intact(path, problems)
        if found is not None:
            state, step = found
            return {k: state.get(k, {}) for k in INFERENCE_KEYS}, step
    raise CheckpointError(f"{workdir}: no intact checkpoint; damaged: {'; '.join(problems)}")

"""The generic trainer: a method's phases on any mesh, resumable, with evaluation and logging.

Flow: dataset index -> method -> state created sharded (eval_shape -> shardings -> jit(init))
-> for each phase: data stream -> jitted step (explicit in/out shardings, donated state) ->
periodic logging, checkpoints and evaluation -> end-of-phase hooks. Re-running with the same
workdir resumes from the latest checkpoint, including the position in the data stream.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.core import checkpoint as ckpt_lib
from jaxproto.core import logging as log_lib
from jaxproto.core import parallel
from jaxproto.core import workdir as workdir_lib
from jaxproto.core.method import Method, Phase, State
from jaxproto.data import pipeline
from jaxproto.data.records import BadSampleReport, DatasetIndex, Record

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A NaN/Inf loss; the message names the step and the offending terms."""


class Preempted(RuntimeError):
    """SIGTERM received: a checkpoint was saved and the run stopped cleanly."""


def init_state(method: Method, optimizers: dict, seed: int) -> State:
    """Method variables plus step, optimizer states and the run's RNG key."""
    rng = jax.random.key(seed)
    init_rng, run_rng = jax.random.split(rng)
    variables = method.init(init_rng)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": variables["params"],
        "batch_stats": variables.get("batch_stats", {}),
        "extra": variables.get("extra", {}),
        "opt": {name: tx.init(variables["params"]) for name, tx in optimizers.items()},
        "rng": jax.random.key_data(run_rng),
    }


def _finite_report(metrics: dict) -> list[str]:
    return [k for k, v in metrics.items() if np.ndim(v) == 0 and not np.isfinite(float(v))]


def make_train_step(
    method: Method, phase: Phase, tx: optax.GradientTransformation
) -> Callable[[State, dict], tuple[State, dict]]:
    """The pure train step of ``phase``: (state, batch) -> (new state, metrics).

    One value-and-grad of ``method.loss`` over the params, the phase's optimizer update, the
    method's state updates (batch_stats, EMA ...) and the phase's ``post_update``. Jit it with
    the state and batch shardings (``Trainer.step_fn`` does)."""

    def step(state: State, batch: dict) -> tuple[State, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_fn(params):
            return method.loss(params, state, batch, rng, phase)

        (loss, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        opt_state = state["opt"][phase.optimizer]
        upd, opt_state = tx.update(grads, opt_state, state["params"])
        new_state = dict(state)
        new_state["params"] = optax.apply_updates(state["params"], upd)
        new_state["opt"] = {**state["opt"], phase.optimizer: opt_state}
        new_state["step"] = state["step"] + 1
        for name, value in updates.items():
            new_state[name] = value
        if phase.post_update is not None:
            new_state = phase.post_update(new_state)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
        return new_state, metrics

    return step


def make_predict_fn(method: Method, mesh: jax.sharding.Mesh) -> Callable:
    """``method.predict`` jitted with replicated outputs (every process sees every row)."""
    return jax.jit(method.predict, out_shardings=parallel.replicated(mesh))


@dataclasses.dataclass
class _Context:
    """HookContext handed to phase hooks."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    index: DatasetIndex
    is_main_process: bool
    trainer: Trainer

    def stream_predictions(self, state, records, batch_size=None, predict_fn=None):
        trainer = self.trainer
        return stream_predictions(
            trainer.method,
            trainer.mesh,
            state,
            records,
            batch_size or trainer.config.train.eval_batch_size,
            worker_count=int(trainer.config.train.worker_count),
            predict_fn=predict_fn or trainer.predict_fn,
        )


class Trainer:
    """Runs one config in one workdir."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        method: Method,
        report: BadSampleReport,
        devices: Sequence[jax.Device] | None = None,
    ):
        """``method`` is built on the dataset index that ``report`` collected bad samples of
        (``jaxproto.methods.build_trainer`` does both from a config)."""
        self.config = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.mesh = parallel.make_mesh(config.mesh, devices)
        self.report = report
        self.method = method
        self.index = method.index
        self.train_records = self.index.split("train")
        self.global_batch = int(config.train.batch_size)
        n_dev = self.mesh.size
        if self.global_batch % n_dev or self.global_batch % jax.process_count():
            raise ValueError(
                f"train.batch_size={self.global_batch} must be divisible by the {n_dev} devices"
                f" and {jax.process_count()} processes"
            )
        self.steps_per_epoch = max(1, len(self.train_records) // self.global_batch)
        self.optimizers = self.method.optimizers(self.steps_per_epoch)
        self.phases = self.method.phases()
        self.phase_steps = [self._phase_length(p) for p in self.phases]
        self.total_steps = sum(self.phase_steps)
        self.is_main = parallel.is_main_process()
        self.writer = None
        self._stop_requested = False
        self._step_fns: dict[int, Callable] = {}
        self._predict_fn = None

        abstract = jax.eval_shape(
            functools.partial(init_state, self.method, self.optimizers), int(config.train.seed)
        )
        self.state_shardings = parallel.tree_shardings(abstract, self.mesh, config.mesh.rules)
        self.abstract_state = abstract

    # ------------------------------------------------------------------ setup
    def _phase_length(self, phase: Phase) -> int:
        if phase.steps:
            return int(phase.steps)
        return max(1, int(round(phase.epochs * self.steps_per_epoch)))

    def create_state(self) -> State:
        create = jax.jit(
            functools.partial(init_state, self.method, self.optimizers),
            static_argnums=0,
            out_shardings=self.state_shardings,
        )
        return create(int(self.config.train.seed))

    def _batch_sharding(self):
        return parallel.batch_sharding(self.mesh)

    # ------------------------------------------------------------------ step
    def step_fn(self, phase_index: int) -> Callable:
        """The jitted train step of phase ``phase_index`` (explicit shardings, donated state),
        compiled once per phase."""
        if phase_index not in self._step_fns:
            phase = self.phases[phase_index]
            self._step_fns[phase_index] = jax.jit(
                make_train_step(self.method, phase, self.optimizers[phase.optimizer]),
                in_shardings=(self.state_shardings, self._batch_sharding()),
                out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
                donate_argnums=0,
            )
        return self._step_fns[phase_index]

    # ------------------------------------------------------------------ data
    def _stream_origin(self, phase_index: int) -> tuple[int, int]:
        """(stream number, first global batch) of phase ``phase_index``: a phase continues the
        stream of the phase before it when both name the same ``Phase.stream``."""
        group, start = -1, 0
        for i, phase in enumerate(self.phases[: phase_index + 1]):
            if i == 0 or not phase.stream or phase.stream != self.phases[i - 1].stream:
                group, start = group + 1, 0
            if i < phase_index:
                start += self.phase_steps[i]
        return group, start

    def train_stream(self, phase_index: int):
        """The checkpointable training stream of phase ``phase_index`` (global batches)."""
        phase = self.phases[phase_index]
        sampler, example_fn = self.method.train_data(phase, self.train_records)
        group, start_batch = self._stream_origin(phase_index)
        return pipeline.make_train_stream(
            sampler,
            example_fn,
            global_batch_size=self.global_batch,
            seed=int(self.config.train.seed) * 1000 + group,
            start_batch=start_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            worker_count=int(self.config.train.worker_count),
            records=self.train_records,
            report=self.report,
        )

    # ------------------------------------------------------------------ eval
    @property
    def predict_fn(self) -> Callable:
        """``method.predict`` compiled once for this trainer's mesh."""
        if self._predict_fn is None:
            self._predict_fn = make_predict_fn(self.method, self.mesh)
        return self._predict_fn

    def hook_context(self) -> _Context:
        """What phase hooks and evaluation see of this trainer (``HookContext``)."""
        return _Context(self.config, self.workdir, self.mesh, self.index, self.is_main, self)

    def evaluate(self, state: State, split: str) -> dict:
        records = self.index.split(split)
        stream = self.hook_context().stream_predictions(state, records)
        preds = collect_predictions(stream, len(records))
        return self.method.evaluate(preds, records)

    # ------------------------------------------------------------------ loop
    @property
    def preempted(self) -> bool:
        """True when SIGTERM stopped the run (a checkpoint was saved; rerun to resume)."""
        return self._stop_requested

    def _install_sigterm(self):
        def handler(signum, frame):
            log.warning("SIGTERM received: saving a checkpoint and stopping")
            self._stop_requested = True

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not in the main thread
            pass

    def _meta(self, phase_index, step_in_phase, best):
        return {
            "phase_index": phase_index,
            "step_in_phase": step_in_phase,
            "best": best,
            "finished": phase_index >= len(self.phases),
        }

    def train(self) -> State:
        """Trains to the end (or to ``train.max_steps``); returns the final state."""
        cfg = self.config
        log_lib.setup_logging(self.workdir)
        if self.is_main:
            workdir_lib.record_config(self.workdir, cfg)  # never overwrites config.json
            workdir_lib.write_dataset_meta(self.workdir, workdir_lib.dataset_meta(self.index))
            self.report.write(self.workdir)
        self.writer = log_lib.MetricWriter(self.workdir)
        ckpt = ckpt_lib.Checkpointer(self.workdir, keep=int(cfg.train.keep_checkpoints))
        self._install_sigterm()
        best = None
        phase_index, step_in_phase = 0, 0
        resume_step = ckpt.latest_step()
        state = None
        if resume_step is not None:
            meta = ckpt.restore_meta(resume_step)
            phase_index, step_in_phase = int(meta["phase_index"]), int(meta["step_in_phase"])
            best = meta.get("best")
            log.info(
                "resuming from step %d (phase %d, step %d in phase)",
                resume_step,
                phase_index,
                step_in_phase,
            )
        else:
            state = self.create_state()
        log.info(
            "%s on %s: %d train images, %d steps/epoch, phases %s, mesh %s, %d process(es)",
            cfg.method,
            self.index.name,
            len(self.train_records),
            self.steps_per_epoch,
            [f"{p.name}:{n}" for p, n in zip(self.phases, self.phase_steps, strict=True)],
            dict(self.mesh.shape),
            jax.process_count(),
        )
        try:
            while phase_index < len(self.phases):
                phase = self.phases[phase_index]
                # Global batches placed on the devices one step ahead; checkpoints the stream.
                stream = pipeline.Prefetch(
                    self.train_stream(phase_index),
                    lambda local: parallel.global_batch(local, self.mesh),
                )
                if state is None:
                    same_layout = step_in_phase > 0 and ckpt.has_data_iter(resume_step)
                    state, _ = ckpt.restore(
                        resume_step,
                        self.abstract_state,
                        self.state_shardings,
                        data_iter=stream if same_layout else None,
                    )
                    if step_in_phase > 0 and not same_layout:
                        _seek(stream, step_in_phase)
                ctx = self.hook_context()
                if step_in_phase == 0:
                    for hook in phase.before:
                        state = hook(ctx, state)
                state, step_in_phase, best, stopped = self._run_phase(
                    phase_index, state, stream, step_in_phase, ckpt, best
                )
                if stopped:
                    return state
                for hook in phase.after:
                    state = hook(ctx, state)
                best = self._evaluate_and_track(state, ckpt, best, phase_index + 1, 0)
                phase_index, step_in_phase = phase_index + 1, 0
                ckpt.save(int(state["step"]), state, self._meta(phase_index, 0, best))
                if self._stop_requested:
                    log.warning("stopped after SIGTERM; rerun the same command to resume")
                    return state
            return state
        finally:
            ckpt.close()
            self.writer.close()

    def _evaluate_and_track(self, state, ckpt, best, phase_index, step_in_phase):
        cfg = self.config.train
        metrics = self.evaluate(state, cfg.eval_split)
        step = int(state["step"])
        self.writer.write(step, f"eval_{cfg.eval_split}", _scalars(metrics))
        log.info("eval %s @ step %d: %s", cfg.eval_split, step, _short(metrics))
        name = cfg.best_metric
        if name:
            value = metrics.get(name)
            if value is None:
                raise KeyError(
                    f"train.best_metric={name!r} not among eval metrics {sorted(metrics)}"
                )
            better = best is None or (value > best if cfg.best_mode == "max" else value < best)
            if better:
                best = float(value)
                ckpt.save_best(
                    step, state, {**self._meta(phase_index, step_in_phase, best), name: best}
                )
        return best

    def _run_phase(self, phase_index, state, stream, step_in_phase, ckpt, best):
        cfg = self.config.train
        phase = self.phases[phase_index]
        n_steps = self.phase_steps[phase_index]
        step_fn = self.step_fn(phase_index)
        eval_every = (
            int(round(cfg.eval_every_epochs * self.steps_per_epoch))
            if cfg.eval_every_epochs > 0
            else 0
        )
        progress = log_lib.Progress(n_steps, step_in_phase, f"{phase.name}", self.global_batch)
        pending = None  # the previous step's metrics, checked one step late to stay async
        step = int(state["step"])
        compiled = False
        try:
            while step_in_phase < n_steps:
                if cfg.max_steps and step >= cfg.max_steps:
                    ckpt.save(
                        step, state, self._meta(phase_index, step_in_phase, best), data_iter=stream
                    )
                    return state, step_in_phase, best, True
                batch = next(stream)
                if not compiled:
                    step_fn = parallel.compile_in_step(
                        step_fn, state, batch, name=f"phase{phase_index}/step{step}"
                    )
                    compiled = True
                state, metrics = step_fn(state, batch)
                step, step_in_phase = step + 1, step_in_phase + 1
                if pending is not None:
                    self._check_finite(*pending)
                pending = (step, metrics)
                if step % cfg.log_every_steps == 0 or step_in_phase == n_steps:
                    host = parallel.to_host(metrics)
                    self._check_finite(step, host)
                    host["images_per_sec"] = progress.images_per_second(step_in_phase)
                    host["phase"] = phase_index
                    self.writer.write(step, "train", host)
                    progress.update(step_in_phase, {"loss": float(host["loss"])})
                stop = self._stop_requested
                if step_in_phase < n_steps and (
                    stop or (cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0)
                ):
                    self._check_finite(*pending)
                    ckpt.save(
                        step, state, self._meta(phase_index, step_in_phase, best), data_iter=stream
                    )
                if stop:
                    ckpt.wait()
                    log.warning(
                        "stopped at step %d after SIGTERM; rerun the same command to resume", step
                    )
                    return state, step_in_phase, best, True
                if eval_every and step_in_phase % eval_every == 0 and step_in_phase < n_steps:
                    best = self._evaluate_and_track(state, ckpt, best, phase_index, step_in_phase)
            if pending is not None:
                self._check_finite(*pending)
        finally:
            progress.close()
        return state, step_in_phase, best, False

    def _check_finite(self, step, metrics):
        host = parallel.to_host(metrics)
        bad = _finite_report(host)
        if bad:
            terms = ", ".join(f"{k}={host[k]}" for k in bad)
            raise TrainingDiverged(
                f"non-finite values at step {step}: {terms}. The last good checkpoint in "
                f"{self.workdir}/ckpt is kept; lower the learning rate or check the data."
            )


def _seek(stream, batches: int) -> None:
    """Positions a fresh stream after ``batches`` batches. Used when a checkpoint was written
    by a different number of processes: the stream position is layout-independent (global
    batch i is the same examples for any process count), grain's per-process files are not."""
    position = stream.get_state()
    if set(position) != {"next_index"}:
        raise RuntimeError(
            "resuming with a different number of processes needs train.worker_count=0 for the "
            "first run after the change"
        )
    stream.set_state({"next_index": int(batches)})
    log.info("data stream positioned at batch %d (checkpoint from another process layout)", batches)


def _scalars(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _short(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in _scalars(metrics).items())


def stream_predictions(
    method: Method,
    mesh: jax.sharding.Mesh,
    state: State,
    records: Sequence[Record],
    batch_size: int,
    worker_count: int = 0,
    predict_fn: Callable | None = None,
) -> Iterator[tuple[np.ndarray, dict]]:
    """Streams ``records`` through jitted ``method.predict``; yields (record indices, outputs).

    Without ``predict_fn`` the state is replicated over ``mesh`` first (a state loaded for
    inference); with it (a compiled function kept across evaluations, e.g. the trainer's) the
    state is used with the shardings it has."""
    batch_size = parallel.device_multiple(batch_size, mesh)
    if predict_fn is None:  # a state loaded for inference sits on one device: replicate it
        predict_fn = make_predict_fn(method, mesh)
        state = jax.device_put(state, parallel.replicated(mesh))
    predict = predict_fn
    batches = pipeline.make_eval_batches(
        records,
        method.eval_example,
        batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=worker_count,
    )
    for i, (_, local, _) in enumerate(batches):
        batch = parallel.global_batch(local, mesh)
        out = predict(state, batch)
        start = i * batch_size
        idx = np.arange(start, min(start + batch_size, len(records)))
        yield idx, out


def collect_predictions(stream, total: int) -> dict[str, np.ndarray]:
    """Stacks streamed outputs into numpy arrays of length ``total``."""
    parts: dict[str, list] = {}
    for idx, out in stream:
        host = parallel.to_host(out)
        for k, v in host.items():
            parts.setdefault(k, []).append(v[: len(idx)])
    out = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    for k, v in out.items():
        if len(v) != total:
            raise RuntimeError(f"prediction {k!r} has {len(v)} rows for {total} records")
    return out

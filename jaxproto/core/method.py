"""The contract between the generic trainer and a method (CIPL, CSR, X-MIR, baseline, ...).

The trainer owns the loop, sharding, checkpoints, logging and data plumbing; a method owns its
model, losses, phases and metrics. State is a plain dict pytree::

    {"step": int32[], "params": ..., "batch_stats": ..., "extra": ...,   # extra: EMA, ids, ...
     "opt": {optimizer_name: optax state}, "rng": key}

so sharding rules, checkpoints, EMA and weight import are pytree operations.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import optax

from jaxproto.data.records import DatasetIndex, Record

PyTree = Any
State = dict[str, Any]
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class HookContext(Protocol):
    """What an end-of-phase hook (e.g. CIPL push, CSR atlas) may use; provided by the trainer."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    index: DatasetIndex
    is_main_process: bool

    def stream_predictions(
        self, state: State, records: Sequence[Record], batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, dict[str, jax.Array]]]:
        """Yields (record indices, method.predict outputs as global arrays) over ``records``
        in order, sharded over the mesh and the processes; the last batch is padded and its
        padding dropped from the indices."""
        ...


Hook = Callable[[HookContext, State], State]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stage of training.

    ``optimizer`` names an entry of ``Method.optimizers``; parameters that optimizer freezes
    are not updated. ``loss`` and ``data`` are method-defined variant names passed back to
    ``Method.loss`` and ``Method.train_data``. Length is ``epochs`` (over the training split)
    or ``steps``. ``before`` hooks run when the phase starts (not on resume inside it), ``after``
    hooks when it ends. ``post_update`` is traced into the jitted step after the optimizer
    update (e.g. CIPL's own-class non-negative projection of the last layer).
    """

    name: str
    optimizer: str
    loss: str = "default"
    data: str = "default"
    epochs: float = 0.0
    steps: int = 0
    before: tuple[Hook, ...] = ()
    after: tuple[Hook, ...] = ()
    post_update: Callable[[State], State] | None = None


class Sampler(Protocol):
    """Decides which records (or tuples of records) an epoch visits, deterministically."""

    def __len__(self) -> int:
        """Examples per epoch."""
        ...

    def epoch(self, epoch: int) -> np.ndarray:
        """Record indices for ``epoch``: shape (len,) or (len, k) for k-tuples (pairs)."""
        ...


ExampleFn = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
"""Turns one sampler entry (a record index, or a row of indices) into one example dict of
numpy arrays with fixed shapes (decode + augment); must be picklable for worker processes."""


class Method(abc.ABC):
    """A trainable, explainable model. Subclasses are registered in ``jaxproto.methods``."""

    def __init__(self, config: ml_collections.ConfigDict, index: DatasetIndex):
        self.config = config
        self.index = index

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> State:
        """Returns {"params", "batch_stats", "extra"} (no step/opt/rng: the trainer adds them)."""

    @abc.abstractmethod
    def optimizers(self, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
        """Named optimizers; each handles the whole param tree (frozen groups via set_to_zero)."""

    @abc.abstractmethod
    def phases(self) -> list[Phase]:
        """The training schedule."""

    @abc.abstractmethod
    def train_data(self, phase: Phase, records: Sequence[Record]) -> tuple[Sampler, ExampleFn]:
        """Sampler and example function for the phase's data variant."""

    @abc.abstractmethod
    def loss(
        self, params: PyTree, state: State, batch: Batch, rng: jax.Array, phase: Phase
    ) -> tuple[jax.Array, tuple[Metrics, dict[str, PyTree]]]:
        """Scalar loss, per-term metrics and state updates ({"batch_stats": ..., "extra": ...})."""

    @abc.abstractmethod
    def eval_example(self, record: Record) -> dict[str, np.ndarray]:
        """Deterministic test-time transform of one record (must contain "image")."""

    @abc.abstractmethod
    def predict(self, state: State, batch: Batch) -> dict[str, jax.Array]:
        """Jittable inference on a batch (student/eval mode): logits, probs, maps, embeddings."""

    @abc.abstractmethod
    def evaluate(self, predictions: dict[str, np.ndarray], records: Sequence[Record]) -> dict:
        """Metrics from stacked predictions for ``records`` (AUC, F1, retrieval, pointing ...)."""

    def class_names(self) -> list[str]:
        return list(self.index.class_names)

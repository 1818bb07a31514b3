"""The contract between the generic trainer and a method (CIPL, CSR, X-MIR, baseline, ...).

The trainer owns the loop, sharding, checkpoints, logging and data plumbing; a method owns its
model, losses, phases and metrics. State is a plain dict pytree::

    {"step": int32[], "params": ..., "batch_stats": ..., "extra": ...,   # extra: EMA, ids, ...
     "opt": {optimizer_name: optax state}, "rng": key}

so sharding rules, checkpoints, EMA and weight import are pytree operations.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import jax
import ml_collections
import numpy as np
import optax

from jaxproto.common.errors import UserError
from jaxproto.core import metrics as metrics_lib
from jaxproto.core import outputs, protocol
from jaxproto.data.pipeline import ExampleFn, Sampler
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.viz import report

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
        self,
        state: State,
        records: Sequence[Record],
        batch_size: int | None = None,
        predict_fn: Callable | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, jax.Array]]]:
        """Yields (record indices, outputs as global arrays) over ``records`` in order,
        sharded over the mesh and the processes; the last batch is padded and its padding
        dropped from the indices. Outputs are ``method.predict``'s, or ``predict_fn(state,
        batch)``'s when given (a jitted function with replicated outputs, e.g. a push pass)."""
        ...


Hook = Callable[[HookContext, State], State]

BoxXYWH = tuple[float, float, float, float]

THRESHOLDS_FILE = "thresholds.json"  # operating thresholds, in a workdir and an export
THRESHOLD_CRITERION = "best F1 (core.metrics.best_threshold_f1)"


@dataclasses.dataclass(frozen=True)
class ExplainRequest:
    """What ``python -m jaxproto.explain`` asks a method to explain (boxes are x, y, w, h in
    the original image's pixels; concepts are given by index or name)."""

    image: str
    out_dir: str
    source: str  # the workdir or export the model was loaded from (atlas, thresholds)
    boxes: tuple[BoxXYWH, ...] = ()  # reference boxes to draw (e.g. BBox_List_2017)
    positive_boxes: tuple[BoxXYWH, ...] = ()  # doctor-in-the-loop: "look here"
    negative_boxes: tuple[BoxXYWH, ...] = ()  # "not there"
    reject_concepts: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Converter:
    """One ``python -m jaxproto.convert <name>`` subcommand a method contributes."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stage of training.

    ``optimizer`` names an entry of ``Method.optimizers``; parameters that optimizer freezes
    are not updated. ``trainable`` is the regex (``common.trees``) over parameter paths that
    the phase trains; the method builds the named optimizer to freeze every other parameter
    (``common.trees.label_tree(..., trainable=phase.trainable)``). ``loss`` and ``data`` are
    method-defined variant names passed back to
    ``Method.loss`` and ``Method.train_data``. Length is ``epochs`` (over the training split)
    or ``steps``. ``before`` hooks run when the phase starts (not on resume inside it), ``after``
    hooks when it ends. ``post_update`` is traced into the jitted step after the optimizer
    update (e.g. CIPL's own-class non-negative projection of the last layer). Consecutive
    phases with the same non-empty ``stream`` read one training stream (one seed, positions
    continuing), as if they were one phase cut into pieces (e.g. per-epoch hooks).
    """

    name: str
    optimizer: str
    trainable: str = ".*"
    loss: str = "default"
    data: str = "default"
    epochs: float = 0.0
    steps: int = 0
    before: tuple[Hook, ...] = ()
    after: tuple[Hook, ...] = ()
    post_update: Callable[[State], State] | None = None
    stream: str = ""


class Method(abc.ABC):
    """A trainable, explainable model. Subclasses are registered in ``jaxproto.methods``."""

    # eval.protocol -> the split that model selection and F1 thresholds use (core.protocol).
    PROTOCOLS: ClassVar[Mapping[str, str]] = protocol.DEFAULT_PROTOCOLS

    def __init__(self, config: ml_collections.ConfigDict, index: DatasetIndex):
        self.config = config
        self.index = index
        # Set by ``inference.load_for_inference``: the operating thresholds
        # ({"split", "criterion", "classes": {name: threshold}}; None for a model saved
        # without them) and where the model came from ({"source", "kind", "id"}).
        self.thresholds: dict | None = None
        self.provenance: dict[str, str] = {}

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

    # ---------------------------------------------------------------- what the CLIs need

    def explain(self, state: State, request: ExplainRequest) -> dict[str, str]:
        """Writes the evidence for one image into ``request.out_dir`` (PNG + JSON + HTML);
        returns the written files by role (``{"html": ..., "json": ...}``)."""
        raise UserError(f"{self.config.method} models have no explain report")

    def probability_names(self, num_columns: int) -> list[str]:
        """The class of each ``outputs.PROBS`` column: every class, or every class but the
        background when the model predicts it implicitly (CIPL's No-Finding logit)."""
        names = self.class_names()
        if num_columns != len(names):
            names = [n for i, n in enumerate(names) if i != self.index.background_class]
        return names

    def operating_thresholds(
        self, predictions: dict[str, np.ndarray], records: Sequence[Record], split: str
    ) -> dict | None:
        """The per-class operating thresholds chosen on ``split``'s predictions (best F1 per
        class, one-vs-rest on ``outputs.PROBS``), as saved in ``THRESHOLDS_FILE``; None when
        the model has no class probabilities. Classes without a positive get no threshold."""
        probs = predictions.get(outputs.PROBS)
        if probs is None or not len(records):
            return None
        names = self.class_names()
        keep = [i for i, n in enumerate(names) if n in self.probability_names(probs.shape[1])]
        labels = np.stack([np.asarray(r.labels, np.float32) for r in records])[:, keep] > 0.5
        report = metrics_lib.classification_report(
            labels.astype(np.int64), probs, [names[i] for i in keep]
        )
        classes = {
            n: r["threshold"] for n, r in report["classes"].items() if r["threshold"] is not None
        }
        return {
            "split": split,
            "criterion": THRESHOLD_CRITERION,
            "num_images": len(records),
            "classes": classes,
        }

    def operating_point_metrics(
        self, predictions: dict[str, np.ndarray], records: Sequence[Record]
    ) -> dict | None:
        """F1 per class at the saved operating thresholds (``self.thresholds``, chosen on their
        own split) on these predictions, one-vs-rest on ``outputs.PROBS``: unlike the
        best-threshold F1, no threshold is chosen on the evaluated split. The mean is over the
        classes with a positive label here. None without thresholds or class probabilities."""
        probs = predictions.get(outputs.PROBS)
        thresholds = (self.thresholds or {}).get("classes", {})
        if probs is None or not thresholds or not len(records):
            return None
        names = self.probability_names(probs.shape[1])
        columns = [self.class_names().index(n) for n in names]
        labels = np.stack([np.asarray(r.labels, np.float32) for r in records])[:, columns] > 0.5
        classes = {
            n: metrics_lib.f1_score(labels[:, k], probs[:, k] >= thresholds[n])
            for k, n in enumerate(names)
            if n in thresholds
        }
        scored = [classes[n] for k, n in enumerate(names) if n in classes and labels[:, k].any()]
        return {
            "thresholds_split": self.thresholds.get("split"),
            "mean_f1": float(np.mean(scored)) if scored else None,
            "classes": classes,
        }

    def decisions(self, probabilities: dict[str, float]) -> list[dict]:
        """Decision rows for a page (``viz.report`` ``decisions``): per class its probability,
        the operating threshold and positive/negative (None without a threshold)."""
        thresholds = (self.thresholds or {}).get("classes", {})
        rows = []
        for name, p in probabilities.items():
            t = thresholds.get(name)
            rows.append(
                {
                    "class": name,
                    "probability": float(p),
                    "threshold": None if t is None else float(t),
                    "decision": None if t is None else bool(p >= t),
                }
            )
        return rows

    def page_header(self, model: str, image: str | None, protocol: str) -> report.Header:
        """The header of an evidence page about ``image`` (None: an in-memory image): the
        model's description, and its id, source and selection from ``provenance``."""
        prov = self.provenance or {}
        return report.Header(
            model=model,
            model_id=prov.get("id", "unknown"),
            source=prov.get("source", "unknown"),
            input=os.path.abspath(image) if image else "an in-memory image",
            protocol=protocol,
            selection=prov.get("selection", ""),
        )

    def prediction_columns(self, predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CSV columns ``predict`` writes per image (name -> (N,) values), in order.

        Default: per class its probability ``<class>`` and, when the model carries operating
        thresholds, ``<class>_decision`` (1 = positive: probability >= threshold) and
        ``<class>_threshold``; the background class is left out when the model predicts it
        implicitly (CIPL's No-Finding logit)."""
        probs = predictions.get(outputs.PROBS)
        if probs is None:
            return {}
        thresholds = (self.thresholds or {}).get("classes", {})
        columns = {}
        for i, name in enumerate(self.probability_names(probs.shape[1])):
            columns[name] = probs[:, i]
            if name in thresholds:
                t = float(thresholds[name])
                columns[f"{name}_decision"] = (probs[:, i] >= t).astype(np.int64)
                columns[f"{name}_threshold"] = np.full(len(probs), t)
        return columns

    def export_state(
        self, state: State, config: ml_collections.ConfigDict
    ) -> tuple[State, ml_collections.ConfigDict]:
        """The inference state and config an export stores (``inference.write_export``), e.g.
        with training-only layers folded away (CSR's task-head BatchNorm); the config must
        describe the returned state. Default: both unchanged."""
        return state, config

    def export_files(self, workdir: str) -> dict[str, str]:
        """Evidence files an export carries besides the model ({name in the export: path in
        ``workdir``}; e.g. CIPL's prototype atlas, so ``explain --export`` can show it)."""
        return {}

    def prediction_arrays(self, predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-image arrays ``predict`` saves beside the CSV as ``<stem>_<name>.npy``."""
        return {}

    def summarize(self, result: dict) -> str:
        """The text ``evaluate`` prints for ``evaluate``'s result."""
        return metrics_lib.format_summary(result)

    @classmethod
    def converters(cls) -> dict[str, Converter]:
        """``python -m jaxproto.convert`` subcommands for this method's original checkpoints."""
        return {}

"""CIPL as a jaxproto Method: phases, optimizers, losses with the EMA teacher, data, metrics.

Schedule (cipl.md §3.1): warm-up (single images) -> main (pairs, co-attention, EMA teacher)
-> push after the configured epochs -> last-layer-only epochs -> main ... One Adam state
("joint") runs through warm-up and main with per-group learning rates halved at configured
epochs; the last layer has its own Adam ("last") whose state persists between pushes.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.backbones import backbone_stride, load_pretrained, merge_pretrained, tap_centre
from jaxproto.common import trees
from jaxproto.common.errors import DataError
from jaxproto.core import outputs
from jaxproto.core.method import (
    Batch,
    Converter,
    ExplainRequest,
    Method,
    Metrics,
    Phase,
    PyTree,
    Sampler,
    State,
)
from jaxproto.core.metrics import classification_report
from jaxproto.data import samplers
from jaxproto.data.images import load_image
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.data.transforms import eval_transform
from jaxproto.kernels.prototypes import exp_similarity
from jaxproto.methods.cipl import convert, data, explain, losses, push
from jaxproto.methods.cipl.localization import localization_metrics
from jaxproto.methods.cipl.model import (
    BACKBONE_TAP,
    CiplNet,
    build_model,
    prototype_class_identity,
)

log = logging.getLogger(__name__)

# Parameter groups (regexes over "/"-joined param paths, ``common.trees``; cipl.md §3.2): the
# joint optimizer's per-group learning rates; every parameter is in exactly one group.
PARAM_GROUPS = (
    ("backbone", r"^(backbone|toplayer)/"),
    ("add_on", r"^add_on_"),
    ("prototypes", r"^prototype_vectors$"),
    ("last_layer", r"^last_layer/"),
    ("pretrain_head", r"^pretrain_classifier/"),
)
# What each optimizer (and so each phase using it) trains; everything else is frozen.
TRAINABLE = {
    "joint": r"^(backbone|toplayer)/|^add_on_|^prototype_vectors$",
    "last": r"^last_layer/",
    "pretrain": r"^(backbone|toplayer)/|^pretrain_classifier/",
}
# CIPL's own predict outputs (besides ``core.outputs.LOGITS``/``PROBS``).
MIN_DISTANCES = "min_distances"  # (B, P) min-pooled prototype distances
CLASS_MAPS = "class_maps"  # (B, h, w, C) max over each class's prototype similarity maps
SIMILARITY_MAPS = "similarity_maps"  # (B, h, w, P), with model.predict_similarity_maps


def param_labels(
    params: PyTree, trainable: str, groups: Sequence[tuple[str, str]] = PARAM_GROUPS
) -> PyTree:
    """Group label per leaf for ``optax.multi_transform``; leaves not matching ``trainable``
    are "frozen". An unknown parameter is an error naming it."""
    return trees.label_tree(params, groups, trainable=trainable)


def halving_schedule(lr: float, epochs: Sequence[int], gamma: float, steps_per_epoch: int):
    """Piecewise-constant LR multiplied by ``gamma`` at the start of each listed epoch."""
    boundaries = {int(e) * steps_per_epoch: gamma for e in epochs if int(e) > 0}
    return optax.piecewise_constant_schedule(lr, boundaries)


def _adam(lr, cfg) -> optax.GradientTransformation:
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def feature_grid(config: ml_collections.ConfigDict) -> tuple[float, float] | None:
    """(cell, centre) in input pixels placing similarity maps on the image, or None to stretch
    them (``cv2.resize``, as the official visualisations) — ``config.localization.grid``."""
    mode = config.get("localization", {}).get("grid", "stretch")
    if mode == "stretch":
        return None
    if mode != "receptive_field":
        raise ValueError(f"localization.grid must be 'receptive_field' or 'stretch', got {mode!r}")
    m = config.model
    tap = m.get("tap", "") or BACKBONE_TAP
    return float(backbone_stride(m.backbone, tap)), tap_centre(m.backbone, tap)


def _affine(aug: ml_collections.ConfigDict, prefix: str) -> data.Affine:
    """``data.augment.<prefix>_{degrees,translate,scale,shear}`` (prefix "single" or "pair")."""
    return data.Affine(
        float(aug[f"{prefix}_degrees"]),
        float(aug[f"{prefix}_translate"]),
        tuple(aug[f"{prefix}_scale"]),
        float(aug[f"{prefix}_shear"]),
    )


def _pretrain_epochs(config: ml_collections.ConfigDict) -> int:
    epochs = int(config.train.get("pretrain_epochs", 0))
    if epochs < 0:
        raise ValueError(f"train.pretrain_epochs must be >= 0, got {epochs}")
    return epochs


def _check_index(index: DatasetIndex) -> int:
    if index.background_class is None:
        raise DataError(
            f"dataset {index.name!r} has no background class; CIPL needs one (e.g. 'No Finding')"
        )
    if not index.multilabel:
        log.info("dataset %s is multi-class; CIPL treats labels as multi-hot", index.name)
    return int(index.background_class)


class CiplMethod(Method):
    """CIPL (cipl.md). Register as ``jaxproto.methods.cipl.method:CiplMethod``."""

    def __init__(self, config: ml_collections.ConfigDict, index: DatasetIndex):
        super().__init__(config, index)
        self.background = _check_index(index)
        self.num_classes = index.num_classes
        m = config.model
        self.pretrain_epochs = _pretrain_epochs(config)
        self.model: CiplNet = build_model(m, self.num_classes, self.pretrain_epochs > 0)
        self.identity = prototype_class_identity(self.num_classes, int(m.prototypes_per_class))
        self.fg_eval = losses.all_foreground(self.num_classes, self.background)
        self.fg_main = losses.foreground_classes(
            self.num_classes, self.background, bool(config.loss.fix_last_class)
        )
        if self.fg_main.size == 0:
            raise ValueError("CIPL needs at least one foreground class in the main-stage loss")
        self.grid = feature_grid(config)

    # ------------------------------------------------------------------ state
    def init(self, rng: jax.Array) -> State:
        size = int(self.config.model.image_size)
        x = jnp.zeros((1, size, size, 3), jnp.float32)
        variables = self.model.init({"params": rng}, x, train=False)
        init_from = self.config.model.get("init_from", "")
        if init_from:
            pretrained = load_pretrained(init_from, self.config.model.backbone, drop_head=True)
            variables = merge_pretrained(variables, pretrained, prefix="backbone")
        params = variables["params"]
        batch_stats = variables.get("batch_stats", {})
        ema_bs = jax.tree.map(jnp.copy, batch_stats)
        return {
            "params": params,
            "batch_stats": batch_stats,
            # Teacher: params overwritten from the student at the first main step (before hook);
            # BN buffers start as the student's initial buffers (cipl.md §1.7).
            "extra": {"ema_params": jax.tree.map(jnp.copy, params), "ema_batch_stats": ema_bs},
        }

    def optimizers(self, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
        o = self.config.optim
        sched = functools.partial(
            halving_schedule,
            epochs=list(o.lr_halving_epochs),
            gamma=float(o.lr_gamma),
            steps_per_epoch=steps_per_epoch,
        )
        joint = optax.multi_transform(
            {
                "backbone": _adam(sched(float(o.backbone_lr)), o),
                "add_on": _adam(sched(float(o.add_on_lr)), o),
                "prototypes": _adam(sched(float(o.prototypes_lr)), o),
                "frozen": optax.set_to_zero(),
            },
            functools.partial(param_labels, trainable=TRAINABLE["joint"]),
        )
        # One transform for the whole trainable set: every trainable leaf gets the same label.
        last = optax.multi_transform(
            {"last_layer": _adam(float(o.last_layer_lr), o), "frozen": optax.set_to_zero()},
            functools.partial(
                param_labels, trainable=TRAINABLE["last"], groups=(("last_layer", ""),)
            ),
        )
        out = {"joint": joint, "last": last}
        if self.pretrain_epochs:
            out["pretrain"] = optax.multi_transform(
                {"pretrain": _adam(float(o.pretrain_lr), o), "frozen": optax.set_to_zero()},
                functools.partial(
                    param_labels, trainable=TRAINABLE["pretrain"], groups=(("pretrain", ""),)
                ),
            )
        return out

    # ------------------------------------------------------------------ schedule
    def phases(self) -> list[Phase]:
        t = self.config.train
        warm, total = int(t.warmup_epochs), int(t.num_epochs)
        pushes = sorted(int(p) for p in t.push_epochs)
        if any(p < warm or p >= total for p in pushes) or len(set(pushes)) != len(pushes):
            raise ValueError(
                f"train.push_epochs={pushes} must be distinct epochs in [warmup_epochs={warm}, "
                f"num_epochs={total})"
            )
        out = []
        pretrain = _pretrain_epochs(self.config)
        if pretrain:
            out.append(
                Phase(
                    "pretrain",
                    "pretrain",
                    trainable=TRAINABLE["pretrain"],
                    loss="pretrain",
                    data="single",
                    epochs=pretrain,
                )
            )
        if warm > 0:
            out.append(
                Phase(
                    "warmup",
                    "joint",
                    trainable=TRAINABLE["joint"],
                    loss="warmup",
                    data="single",
                    epochs=warm,
                )
            )
        start, first = warm, True
        for p in pushes:
            out.append(self._main_phase(p + 1 - start, first, after=(self._push_hook(p),)))
            out.append(
                Phase(
                    f"last_layer@{p}",
                    "last",
                    trainable=TRAINABLE["last"],
                    loss="main",
                    data="pairs",
                    epochs=int(t.last_layer_epochs),
                    post_update=self.project_last_layer,
                )
            )
            start, first = p + 1, False
        if start < total:
            out.append(self._main_phase(total - start, first, after=()))
        return [ph for ph in out if ph.epochs > 0]

    def _main_phase(self, epochs: int, first: bool, after: tuple) -> Phase:
        return Phase(
            "main",
            "joint",
            trainable=TRAINABLE["joint"],
            loss="main",
            data="pairs",
            epochs=epochs,
            before=(init_ema_hook,) if first else (),
            after=after,
        )

    def _push_hook(self, epoch: int):
        return functools.partial(push.push_hook, method=self, epoch=epoch)

    def project_last_layer(self, state: State) -> State:
        """W = max(W, 0) restricted to own-class connections, after every last-layer step."""
        kernel = state["params"]["last_layer"]["kernel"]
        projected = jnp.maximum(kernel * jnp.asarray(self.identity, kernel.dtype), 0.0)
        params = {
            **state["params"],
            "last_layer": {**state["params"]["last_layer"], "kernel": projected},
        }
        return {**state, "params": params}

    # ------------------------------------------------------------------ data
    def _image_weights(self, labels: np.ndarray, background_factor: float) -> np.ndarray:
        given = list(self.config.data.get("class_weights", []))
        if given:
            if len(given) != self.num_classes:
                raise ValueError(
                    f"data.class_weights has {len(given)} entries, dataset has "
                    f"{self.num_classes} classes"
                )
            cw = np.asarray(given, np.float64)
        else:
            cw = data.inverse_frequency_class_weights(labels).astype(np.float64)
        cw[self.background] *= background_factor
        return data.cipl_image_weights(labels, cw)

    def train_data(self, phase: Phase, records: Sequence[Record]) -> tuple[Sampler, Callable]:
        d, seed = self.config.data, int(self.config.train.seed)
        size = int(self.config.model.image_size)
        labels = np.stack([r.labels for r in records]).astype(np.float32)
        aug = d.augment
        if aug.get("policy", "official") not in ("official", "light"):
            raise ValueError(
                f"data.augment.policy must be 'official' or 'light', got {aug.policy!r}"
            )
        light = aug.get("policy", "official") == "light"
        gray = bool(aug.elastic_grayscale)
        if phase.data not in ("single", "pairs"):
            raise ValueError(f"CIPL has no data variant {phase.data!r}; use 'single' or 'pairs'")
        w = self._image_weights(labels, float(d[f"background_weight_{phase.data}"]))
        if phase.data == "single":
            if light:
                tf = data.LightTrainTransform(size)
            else:
                tf = data.CiplTrainTransform(
                    size, affine=_affine(aug, "single"), elastic_grayscale=gray
                )
            return samplers.WeightedSampler(w, len(records), seed), data.SingleExample(records, tf)
        if light:
            tf = data.LightPairViewTransform(size)
        else:
            pad = int(aug.pair_pad) or None
            tf = data.CiplPairViewTransform(
                size, pad=pad, affine=_affine(aug, "pair"), elastic_grayscale=gray
            )
        return data.PairSampler(labels, seed, weights=w), data.PairExample(records, tf)

    def eval_example(self, record: Record) -> dict[str, np.ndarray]:
        img = eval_transform(load_image(record.path), int(self.config.model.image_size))
        return {"image": img, "labels": np.asarray(record.labels, np.float32)}

    # ------------------------------------------------------------------ losses
    def _student_embed(self, params, batch_stats, images: Sequence[jax.Array]):
        """Student embeddings in train mode; BN statistics per apply, running stats threaded."""
        if not bool(self.config.model.student_bn_split):
            images = [jnp.concatenate(images, axis=0)]
        zs = []
        for x in images:
            z, upd = self.model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                method=CiplNet.embed,
            )
            batch_stats = upd["batch_stats"]
            zs.append(z)
        return jnp.concatenate(zs, axis=0), batch_stats

    def _classify(self, params, z):
        return self.model.apply({"params": params}, z, method=CiplNet.classify)

    def _proto_terms(self, out, labels, fg) -> tuple[jax.Array, Metrics]:
        c = self.config.loss
        ce = losses.background_ce(out["logits"], labels, fg, self.background)
        clst, sep = losses.cluster_separation(out["min_distances"], labels, self.identity)
        total = c.crs_ent * ce + c.clst * clst + c.sep * jax.nn.relu(c.sep_margin - sep)
        return total, {"ce": ce, "cluster": clst, "separation": sep}

    def loss(self, params: PyTree, state: State, batch: Batch, rng: jax.Array, phase: Phase):
        del rng
        if phase.loss == "pretrain":
            logits, upd = self.model.apply(
                {"params": params, "batch_stats": state["batch_stats"]},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
                method=CiplNet.pretrain_logits,
            )
            bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["labels"]))
            return bce, ({"pretrain_bce": bce}, {"batch_stats": upd["batch_stats"]})
        if phase.loss == "warmup":
            z, bs = self._student_embed(params, state["batch_stats"], [batch["image"]])
            out = self._classify(params, z)
            total, metrics = self._proto_terms(out, batch["labels"], self.fg_eval)
            return total, (metrics, {"batch_stats": bs})
        if phase.loss == "main":
            if phase.optimizer == "last":
                # Only the last layer trains: cut the other gradients so XLA drops the backbone
                # backward pass (the values, incl. BN/EMA updates, are unchanged).
                params = {
                    k: v if k == "last_layer" else jax.lax.stop_gradient(v)
                    for k, v in params.items()
                }
            return self._main_loss(params, state, batch)
        raise ValueError(
            f"CIPL has no loss variant {phase.loss!r}; use 'pretrain', 'warmup' or 'main'"
        )

    def _main_loss(self, params, state, batch):
        c, sc = self.config.loss, self.model.similarity_scale
        m = float(self.config.model.ema_momentum)
        extra = state["extra"]
        # EMA from the pre-update student params, before the teacher forward (cipl.md §1.7).
        ema_params = jax.tree.map(
            lambda e, p: m * e + (1.0 - m) * jax.lax.stop_gradient(p), extra["ema_params"], params
        )
        views = jnp.concatenate([batch["view_a"], batch["view_b"]], axis=0)
        t_out, t_upd = self.model.apply(
            {"params": ema_params, "batch_stats": extra["ema_batch_stats"]},
            views,
            train=True,
            mutable=["batch_stats"],
        )
        t_sim = jax.lax.stop_gradient(exp_similarity(t_out["distances"], sc))
        t_logits = jax.lax.stop_gradient(t_out["logits"])

        z, bs = self._student_embed(
            params, state["batch_stats"], [batch["image_a"], batch["image_b"]]
        )
        out = self._classify(params, z)
        labels = jnp.concatenate([batch["labels_a"], batch["labels_b"]], axis=0)
        total, metrics = self._proto_terms(out, labels, self.fg_main)

        za, zb = jnp.split(z, 2, axis=0)
        co_a, co_b = losses.co_attention(za, zb, c.coattn_distance)
        co_logits = self._classify(params, jnp.concatenate([co_a, co_b], axis=0))["logits"]
        common = batch["labels_a"] * batch["labels_b"]
        l_co = losses.background_ce(
            co_logits, jnp.concatenate([common, common], 0), self.fg_main, self.background
        )
        l_int = losses.interpretation_alignment(exp_similarity(out["distances"], sc), t_sim)
        l_pred = losses.prediction_alignment(
            out["logits"], t_logits, self.fg_main, self.background, float(c.pred_temperature)
        )
        total = total + c.cross_att * l_co + c.inte_align * l_int + c.pred_align * l_pred
        metrics.update({"co_ce": l_co, "align_int": l_int, "align_pred": l_pred})
        updates = {
            "batch_stats": bs,
            "extra": {"ema_params": ema_params, "ema_batch_stats": t_upd["batch_stats"]},
        }
        return total, (metrics, updates)

    # ------------------------------------------------------------------ inference
    def apply_eval(self, state: State, images: jax.Array) -> dict[str, jax.Array]:
        """Student forward in eval mode: embeddings, distance maps, min distances, logits."""
        return self.model.apply(
            {"params": state["params"], "batch_stats": state["batch_stats"]}, images, train=False
        )

    def predict(self, state: State, batch: Batch) -> dict[str, jax.Array]:
        out = self.apply_eval(state, batch["image"])
        logits = out["logits"]
        sim = exp_similarity(out["distances"], self.model.similarity_scale)
        n, h, w, _ = sim.shape
        per_class = sim.reshape(n, h, w, self.num_classes, -1)  # prototypes are class-major
        result = {
            outputs.PROBS: jax.nn.sigmoid(
                logits[:, self.fg_eval] - logits[:, self.background : self.background + 1]
            ),
            outputs.LOGITS: logits,
            outputs.FEATURES: out["features"],
            MIN_DISTANCES: out["min_distances"],
            CLASS_MAPS: jnp.max(per_class, axis=-1),
        }
        if bool(self.config.model.get("predict_similarity_maps", False)):
            result[SIMILARITY_MAPS] = sim
        return result

    def evaluate(self, predictions: dict[str, np.ndarray], records: Sequence[Record]) -> dict:
        names = [self.index.class_names[k] for k in self.fg_eval]
        y = np.stack([r.labels for r in records])[:, self.fg_eval]
        report = classification_report(y, predictions[outputs.PROBS], names)
        out = {k: v for k, v in report.items() if k != "classes"}
        for name, row in report["classes"].items():
            out[f"auc/{name}"] = row["auc"]
            out[f"f1/{name}"] = row["f1"]
        out["classes"] = report["classes"]
        out.update(
            localization_metrics(
                predictions[CLASS_MAPS],
                records,
                int(self.config.model.image_size),
                class_ids=self.fg_eval,
                threshold_frac=float(self.config.localization.threshold),
                mode=self.config.localization.mode,
                grid=self.grid,
                pointing_tolerance=float(self.config.localization.get("pointing_tolerance", 15.0)),
            )
        )
        return out

    # ------------------------------------------------------------------ CLIs
    def explain(self, state: State, request: ExplainRequest) -> dict[str, str]:
        """Prototype evidence for each predicted class (``methods/cipl/explain.py``); the first
        ``request.boxes`` entry is drawn as the reference box, the atlas comes from
        ``request.source``'s latest push."""
        explain.explain(
            self,
            state,
            request.image,
            request.out_dir,
            box=request.boxes[0] if request.boxes else None,
            atlas_dir=request.source,
        )
        return {
            "html": os.path.join(request.out_dir, explain.REPORT_HTML),
            "json": os.path.join(request.out_dir, explain.EXPLANATION_JSON),
        }

    def export_files(self, workdir: str) -> dict[str, str]:
        """The latest push atlas, so ``explain --export`` shows the prototypes' sources."""
        return explain.export_files(workdir)

    @classmethod
    def converters(cls) -> dict[str, Converter]:
        run = functools.partial(convert.run, method_cls=cls)
        return {"cipl": Converter(convert.HELP, convert.add_arguments, run)}


def init_ema_hook(ctx, state: State) -> State:
    """Before the first main phase: teacher params <- a copy of the student params (§1.7)."""
    del ctx
    log.info("initialising the EMA teacher from the student parameters")
    extra = {**state["extra"], "ema_params": jax.tree.map(jnp.copy, state["params"])}
    return {**state, "extra": extra}

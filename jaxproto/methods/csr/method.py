"""CSR as a trainer Method (specs/csr.md §5): three phases over one parameter tree.

1. ``concepts``: backbone F + concept head C, multi-label BCE (§1).
2. ``prototypes``: projector P + prototypes, multi-prototype contrastive loss; F and C frozen (§2).
   Ends with the prototype atlas hook (§6).
3. ``task_head``: linear H over the K·M max-pooled similarity scores, cross-entropy (§3).

Each phase's ``trainable`` regex (``common.trees``) selects what it trains; its optimizer maps
every other parameter to ``optax.set_to_zero``, and the frozen parts of the forward pass sit
under ``stop_gradient`` so no backward pass runs through them. ``state["extra"]`` holds the
prototype mask (pruning, §4.3) and the atlas (nearest training image per prototype).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.backbones import build_backbone, get_spec, init_with_pretrained
from jaxproto.common import trees
from jaxproto.core import outputs, parallel
from jaxproto.core.method import ExplainRequest, Method, Phase
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.data.samplers import ShuffleSampler
from jaxproto.methods.csr import atlas as atlas_lib
from jaxproto.methods.csr import evaluate as evaluate_lib
from jaxproto.methods.csr import interact, losses, usage
from jaxproto.methods.csr.data import CsrExample, concepts_of
from jaxproto.methods.csr.model import (
    ALIVE_PROTOTYPES,
    BEST_PROTOTYPE,
    CONCEPT_MAPS,
    V_PROJ,
    CsrModel,
    fold_head_bn,
    pool_scores,
    spatial_softmax_pool,
)

log = logging.getLogger(__name__)

REFINE_MODES = ("mask", "mask_retrain")
# What each stage trains (Phase.trainable, over parameter paths) and its optimizer groups
# (first match wins); the group labels name the optimizer states inside the checkpoint.
STAGE_TRAINABLE = {
    "stage1": r"^(backbone|concept_head)/",
    "stage2": r"^(projector/|prototypes$)",
    "stage3": r"^(task_head|head_bn)/",
}
_STAGE_LABELS = {
    "stage1": (("train", ".*"),),
    "stage2": (("prototypes", r"^prototypes$"), ("projector", ".*")),
    "stage3": (("head", ".*"),),
}


def _stage_phase(name: str, stage: str, loss: str, epochs: float, **hooks) -> Phase:
    """A phase of ``stage`` (its optimizer and ``STAGE_TRAINABLE`` regex)."""
    return Phase(
        name, stage, STAGE_TRAINABLE[stage], loss=loss, epochs=epochs, stream=stage, **hooks
    )


class CsrMethod(Method):
    """Concept-based Similarity Reasoning (CVPR 2025). ``backbone`` overrides
    ``config.model.backbone`` with a ready Linen module (tests, custom feature extractors)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        index: DatasetIndex,
        backbone: nn.Module | None = None,
    ):
        super().__init__(config, index)
        m = config.model
        self.num_concepts = len(index.concept_names)
        if self.num_concepts == 0:
            raise ValueError(f"dataset {index.name!r} has no concept names; CSR needs concepts")
        if index.multilabel:
            log.warning(
                "dataset %r is multi-label; CSR uses the arg-max class as target", index.name
            )
        self.image_size = int(m.image_size)
        self.M = int(m.prototypes_per_concept)
        if backbone is None:
            tap = m.get("tap") or get_spec(m.backbone).default_taps[-1]
            backbone = build_backbone(
                m.backbone,
                taps=(tap,),
                dtype=m.get("compute_dtype", "float32"),
                conv1x1=m.get("conv1x1", "xla"),
                stem_conv=m.get("stem_conv", "xla"),
                conv_backend=m.get("conv_backend", "xla"),
            )
        self.model = CsrModel(
            backbone=backbone,
            num_concepts=self.num_concepts,
            num_classes=index.num_classes,
            prototypes_per_concept=self.M,
            proj_dim=int(m.proj_dim),
            ibn_mode=m.ibn_mode,
            proto_init=m.proto_init,
            head_bias=bool(m.head_bias),
            head_input_bn=bool(m.head_input_bn),
        )
        refine = config.get("refine", ml_collections.ConfigDict({"mode": "mask", "prune": []}))
        if refine.mode not in REFINE_MODES:
            raise ValueError(f"refine.mode must be one of {REFINE_MODES}, got {refine.mode!r}")
        self.refine_mode = refine.mode
        self.prune_ids = [int(i) for i in refine.prune]
        if m.get("revival_seed", "split") not in usage.SEEDS:
            raise ValueError(
                f"model.revival_seed must be one of {usage.SEEDS}, got {m.revival_seed!r}"
            )
        loss_cfg = config.loss
        if loss_cfg.margin_mode not in losses.MARGIN_MODES:
            raise ValueError(
                f"loss.margin_mode must be one of {losses.MARGIN_MODES}, "
                f"got {loss_cfg.margin_mode!r}"
            )

    # ------------------------------------------------------------------ state
    def init(self, rng: jax.Array) -> dict:
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        variables = self.model.init({"params": rng}, x, train=False)
        out = {
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "extra": {
                "proto_mask": jnp.ones((self.num_concepts, self.M), jnp.float32),
                **atlas_lib.empty_atlas(self.num_concepts, self.M),
            },
        }
        m = self.config.model
        return init_with_pretrained(out, m.get("init_from", ""), m.backbone, with_head=False)

    def optimizers(self, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
        o = self.config.optim

        def schedule(stage: ml_collections.ConfigDict):
            steps = max(1, int(round(float(stage.epochs) * steps_per_epoch)))
            if stage.schedule == "cosine":
                return optax.cosine_decay_schedule(stage.lr, steps, alpha=stage.end_lr / stage.lr)
            if stage.schedule == "constant":
                return optax.constant_schedule(stage.lr)
            raise ValueError(f"optim schedule must be cosine or constant, got {stage.schedule!r}")

        s1, s2, s3 = o.stage1, o.stage2, o.stage3
        txs = {
            "stage1": {"train": optax.adamw(schedule(s1), weight_decay=s1.wd)},
            "stage2": {
                "projector": optax.adamw(schedule(s2), weight_decay=s2.wd),
                "prototypes": optax.adamw(schedule(s2), weight_decay=s2.proto_wd),
            },
            "stage3": {"head": optax.adamw(schedule(s3), weight_decay=s3.wd)},
        }
        trainable = {p.optimizer: p.trainable for p in self.phases()}

        def labels(stage: str):
            return lambda params: trees.label_tree(
                params, _STAGE_LABELS[stage], trainable=trainable[stage]
            )

        return {
            stage: optax.multi_transform({**tx, "frozen": optax.set_to_zero()}, labels(stage))
            for stage, tx in txs.items()
        }

    def phases(self) -> list[Phase]:
        """concepts, one ``prototypes_<e>`` phase per stage-2 epoch (each ends with the usage
        hook: alive counts, entropy, revival), task_head."""
        o = self.config.optim
        first = (
            (self.init_prototypes_hook,) if self.config.model.proto_init == "sample_vectors" else ()
        )
        prune = (self.prune_hook,) if self.prune_ids else ()
        retrain = self.refine_mode == "mask_retrain"
        total = float(o.stage2.epochs)
        n = max(1, math.ceil(total))
        epochs = [1.0] * (n - 1) + [total - (n - 1)]
        proto_phases = [
            _stage_phase(
                f"prototypes_{e + 1}",
                "stage2",
                "prototypes",
                epochs[e],
                before=first if e == 0 else (),
                after=(functools.partial(self.usage_hook, epoch=e + 1, last=e == n - 1),)
                + ((self.atlas_hook,) if e == n - 1 else ()),
            )
            for e in range(n)
        ]
        return [
            _stage_phase("concepts", "stage1", "concepts", float(o.stage1.epochs)),
            *proto_phases,
            _stage_phase(
                "task_head",
                "stage3",
                "task",
                float(o.stage3.epochs),
                before=prune if retrain else (),
                after=() if retrain else prune,
            ),
        ]

    def train_data(self, phase: Phase, records: Sequence[Record]):
        # One shuffle stream per stage: the per-epoch phases of stage 2 continue one stream.
        stages = list(dict.fromkeys(p.optimizer for p in self.phases()))
        seed = int(self.config.train.seed) + 7919 * stages.index(phase.optimizer)
        return ShuffleSampler(len(records), seed), CsrExample(
            records, self.image_size, self.num_concepts, train=True
        )

    # ------------------------------------------------------------------ losses
    def _variables(self, params, state):
        return {"params": params, "batch_stats": state["batch_stats"]}

    def loss(self, params, state, batch, rng, phase):
        if phase.loss == "concepts":
            return self._concept_loss(params, state, batch)
        if phase.loss == "prototypes":
            return self._prototype_loss(params, state, batch)
        if phase.loss == "task":
            return self._task_loss(params, state, batch)
        raise ValueError(f"CSR has no loss variant {phase.loss!r}")

    def _concept_loss(self, params, state, batch):
        def fwd(mdl, x):
            return mdl.concepts(mdl.features(x, train=True))[1]

        z, upd = self.model.apply(
            self._variables(params, state), batch["image"], method=fwd, mutable=["batch_stats"]
        )
        loss = losses.concept_bce(z, batch["concepts"])
        acc = jnp.mean(((z > 0) == (batch["concepts"] > 0.5)).astype(jnp.float32))
        return loss, (
            {"concept_bce": loss, "concept_acc": acc},
            {"batch_stats": upd["batch_stats"]},
        )

    def _prototype_loss(self, params, state, batch):
        present = batch["concepts"] > 0.5

        def fwd(mdl, x):
            f = jax.lax.stop_gradient(mdl.features(x, train=False))
            cam, _ = mdl.concepts(f)
            v = jax.lax.stop_gradient(spatial_softmax_pool(f, jax.lax.stop_gradient(cam)))
            # Only present (image, concept) pairs are anchors and feed BN statistics (§2.1).
            return mdl.project(v, present, train=True)

        v_proj, upd = self.model.apply(
            self._variables(params, state), batch["image"], method=fwd, mutable=["batch_stats"]
        )
        b, k, d = v_proj.shape
        c = self.config.loss
        loss, aux = losses.multi_prototype_contrastive(
            v_proj.reshape(b * k, d),
            jnp.tile(jnp.arange(k), b),
            present.reshape(-1),
            params["prototypes"],
            gamma=float(c.gamma),
            lam=float(c.lam),
            delta=float(c.delta),
            margin_mode=c.margin_mode,
            reduction=c.reduction,
        )
        return loss, ({"con_loss": loss, **aux}, {"batch_stats": upd["batch_stats"]})

    def _task_loss(self, params, state, batch):
        mask = state["extra"]["proto_mask"]
        clip = self.config.model.clip_negative

        def fwd(mdl, x):
            sims = jax.lax.stop_gradient(mdl.similarity(mdl.features(x, train=False)))
            return mdl.head(pool_scores(sims, clip_negative=clip, proto_mask=mask), train=True)

        logits, upd = self.model.apply(
            self._variables(params, state), batch["image"], method=fwd, mutable=["batch_stats"]
        )
        loss = losses.task_cross_entropy(logits, batch["label"])
        acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
        return loss, ({"task_ce": loss, "task_acc": acc}, {"batch_stats": upd["batch_stats"]})

    # ------------------------------------------------------------------ inference
    def eval_example(self, record: Record) -> dict[str, np.ndarray]:
        # Only the image: predict runs on unlabelled images; evaluate reads labels from records.
        return {"image": CsrExample.image(record, self.image_size)}

    def predict(self, state, batch) -> dict[str, jax.Array]:
        return predict_outputs(self.model, state, batch["image"], self.config.model.clip_negative)

    def evaluate(self, predictions: dict[str, np.ndarray], records: Sequence[Record]) -> dict:
        return evaluate_lib.evaluate_csr(
            predictions,
            records,
            class_names=self.class_names(),
            concept_names=list(self.index.concept_names),
            image_size=self.image_size,
            tolerance_px=float(self.config.get("eval", {}).get("pointing_tolerance_px", 15.0)),
        )

    def explain(self, state: dict, request: ExplainRequest) -> dict[str, str]:
        """Per-concept maps and atlas links before and after the request's doctor-in-the-loop
        corrections (positive/negative boxes, rejected concepts), §4."""
        result = interact.explain_image(
            self,
            state,
            request.image,
            request.out_dir,
            boxes_pos=request.positive_boxes,
            boxes_neg=request.negative_boxes,
            reject=request.reject_concepts,
        )
        return {"html": result["html"], "json": result["json"]}

    def export_state(
        self, state: dict, config: ml_collections.ConfigDict
    ) -> tuple[dict, ml_collections.ConfigDict]:
        """With ``model.head_input_bn``: the task-head BatchNorm folded into the linear head
        (spec §3.3, ``model.fold_head_bn``); the exported config then reads
        ``head_input_bn=False, head_bias=True``, which is the folded model."""
        if not bool(config.model.head_input_bn):
            return state, config
        params, stats = fold_head_bn(state["params"], state["batch_stats"])
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.head_input_bn = False
        config.model.head_bias = True
        log.info("export: task-head BatchNorm folded into the linear head")
        return {
            **state,
            **jax.tree.map(np.asarray, {"params": params, "batch_stats": stats}),
        }, config

    def prediction_arrays(self, predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Concept probabilities (N, K) beside the class-probability CSV."""
        return {outputs.CONCEPT_PROBS: predictions[outputs.CONCEPT_PROBS]}

    # ------------------------------------------------------------------ hooks
    def concept_vectors(self, state: dict, batch: dict) -> dict[str, jax.Array]:
        """Projected local concept vectors v' (B, K, D) only (stage-2 hooks)."""

        def fwd(mdl, x):
            f = mdl.features(x, train=False)
            cam, _ = mdl.concepts(f)
            return mdl.project(spatial_softmax_pool(f, cam), None, False)

        variables = self._variables(state["params"], state)
        return {V_PROJ: self.model.apply(variables, batch["image"], method=fwd)}

    def _train_vectors(self, ctx, state) -> tuple[np.ndarray, np.ndarray]:
        """(v' (N, K, D), concept present (N, K)) over the training split."""
        records = ctx.index.split("train")
        present = np.stack([concepts_of(r, self.num_concepts) for r in records]) > 0.5
        k, d = self.num_concepts, int(self.config.model.proj_dim)
        vectors = np.zeros((len(records), k, d), np.float32)
        fn = jax.jit(self.concept_vectors, out_shardings=parallel.replicated(ctx.mesh))
        for idx, out in ctx.stream_predictions(state, records, predict_fn=fn):
            vectors[idx] = np.asarray(jax.device_get(out[V_PROJ]))[: len(idx)]
        return vectors, present

    def usage_hook(self, ctx, state, epoch: int, last: bool):
        """After every stage-2 epoch: alive prototypes and usage entropy per concept on the
        training set (logged and appended to ``<workdir>/prototype_usage.jsonl``); with
        ``model.prototype_revival`` re-seeds prototypes dead for ``model.revival_patience``
        epochs (not after the last epoch, so the final count is of trained prototypes)."""
        m = self.config.model
        vectors, present = self._train_vectors(ctx, state)
        protos = np.asarray(jax.device_get(state["params"]["prototypes"]))
        builder = atlas_lib.AtlasBuilder(protos)
        builder.add(vectors, present, np.arange(len(vectors)))
        hits = builder.result()["hit_count"]
        stats = usage.usage_stats(hits)
        dead = getattr(self, "_dead_epochs", np.zeros(hits.shape, np.int64))
        self._dead_epochs = np.where(hits > 0, 0, dead + 1)
        revived = np.zeros(hits.shape, bool)
        if bool(m.get("prototype_revival", False)) and not last:
            new, revived = usage.revive(
                protos,
                hits,
                self._dead_epochs,
                int(m.revival_patience),
                vectors,
                present,
                seed=m.get("revival_seed", "split"),
            )
            if revived.any():
                state = _set_params(state, "prototypes", new)
                opt = usage.reset_moments(jax.device_get(state["opt"]["stage2"]), revived)
                opt = _put_tree_like(opt, state["opt"]["stage2"])
                state = {**state, "opt": {**state["opt"], "stage2": opt}}
                self._dead_epochs = np.where(revived, 0, self._dead_epochs)
        row = {
            "epoch": epoch,
            "alive": stats["alive"],
            "mean_alive": float(np.mean(stats["alive"])),
            "entropy": [round(v, 4) for v in stats["entropy"]],
            "revived": int(revived.sum()),
        }
        log.info(
            "CSR stage 2 epoch %d: prototypes alive per concept %s (mean %.1f of %d), usage "
            "entropy %s nats, revived %d",
            epoch,
            row["alive"],
            row["mean_alive"],
            self.M,
            row["entropy"],
            row["revived"],
        )
        if ctx.is_main_process:
            with open(os.path.join(ctx.workdir, "prototype_usage.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
        return state

    def atlas_hook(self, ctx, state):
        """End of stage 2: nearest training image per prototype (Eq. 11), hit counts, HTML."""
        records = ctx.index.split("train")
        vectors, present = self._train_vectors(ctx, state)
        builder = atlas_lib.AtlasBuilder(np.asarray(jax.device_get(state["params"]["prototypes"])))
        builder.add(vectors, present, np.arange(len(vectors)))
        result = builder.result()
        state = _set_extra(state, {k: result[k] for k in atlas_lib.ATLAS_KEYS})
        alive = (result["hit_count"] > 0).sum(axis=1)
        log.info("CSR prototypes alive per concept (hit count > 0): %s", alive.tolist())
        if self.config.model.get("atlas_push", False):
            state = _set_params(state, "prototypes", result["nearest_vector"])
        if ctx.is_main_process:
            atlas_lib.write_prototype_atlas(
                os.path.join(ctx.workdir, "atlas"),
                result,
                records,
                list(self.index.concept_names),
                self.image_size,
            )
        return state

    def init_prototypes_hook(self, ctx, state):
        """``proto_init=sample_vectors``: prototypes start as random projected training vectors."""
        vectors, concepts = self._train_vectors(ctx, state)
        rng = np.random.default_rng(int(self.config.train.seed))
        protos = np.asarray(jax.device_get(state["params"]["prototypes"])).copy()
        for k in range(self.num_concepts):
            rows = np.flatnonzero(concepts[:, k])
            if rows.size:
                protos[k] = vectors[rng.choice(rows, self.M, replace=rows.size < self.M), k]
        return _set_params(state, "prototypes", protos)

    def prune_hook(self, ctx, state):
        """Masks the prototypes listed in ``refine.prune`` (flat ids k·M + m, §4.3)."""
        return prune_prototypes(state, self.prune_ids)


def predict_outputs(model: CsrModel, state: dict, images: jax.Array, clip_negative: str) -> dict:
    """Inference outputs: class logits/probs, concept logits/probs, per-concept maps (max over the
    concept's unpruned prototypes of S), best prototype per concept, projected concept vectors,
    and the pooled backbone features (out-of-distribution statistics)."""
    mask = state["extra"]["proto_mask"]

    def fwd(mdl, x):
        f = mdl.features(x, train=False)
        cam, z = mdl.concepts(f)
        v_proj = mdl.project(spatial_softmax_pool(f, cam), None, False)
        sims = mdl.similarity(f)
        s = pool_scores(sims, clip_negative=clip_negative, proto_mask=mask)
        return mdl.head(s, train=False), z, v_proj, sims, s, jnp.mean(f, axis=(1, 2))

    logits, z, v_proj, sims, s, pooled = model.apply(
        {"params": state["params"], "batch_stats": state["batch_stats"]}, images, method=fwd
    )
    alive = mask[None, :, :, None, None] > 0
    b, k, m = sims.shape[:3]
    return {
        outputs.LOGITS: logits,
        outputs.PROBS: jax.nn.softmax(logits, axis=-1),
        outputs.CONCEPT_LOGITS: z,
        outputs.CONCEPT_PROBS: jax.nn.sigmoid(z),
        CONCEPT_MAPS: jnp.max(jnp.where(alive, sims, -1.0), axis=2),
        BEST_PROTOTYPE: jnp.argmax(s.reshape(b, k, m), axis=-1),
        V_PROJ: v_proj,
        ALIVE_PROTOTYPES: jnp.full((b,), jnp.sum(mask), jnp.float32),
        outputs.FEATURES: pooled,
    }


def _put_like(value, like: jax.Array) -> jax.Array:
    value = jnp.asarray(value, like.dtype)
    sharding = getattr(like, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else value


def _put_tree_like(tree, like):
    return jax.tree.map(_put_like, tree, like)


def _set_extra(state: dict, values: dict) -> dict:
    extra = dict(state["extra"])
    for key, value in values.items():
        extra[key] = _put_like(value, extra[key])
    return {**state, "extra": extra}


def _set_params(state: dict, key: str, value) -> dict:
    params = dict(state["params"])
    params[key] = _put_like(value, params[key])
    return {**state, "params": params}


def prune_prototypes(state: dict, prototype_ids: Sequence[int]) -> dict:
    """Returns ``state`` with the flat prototype ids (k·M + m) masked out of every score (§4.3)."""
    mask = np.asarray(jax.device_get(state["extra"]["proto_mask"])).copy()
    k, m = mask.shape
    for pid in prototype_ids:
        if not 0 <= int(pid) < k * m:
            raise ValueError(f"prototype id {pid} out of range [0, {k * m}) (K={k}, M={m})")
        mask[int(pid) // m, int(pid) % m] = 0.0
    return _set_extra(state, {"proto_mask": mask})

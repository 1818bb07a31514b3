"""CSR as a trainer Method (specs/csr.md §5): three phases over one parameter tree.

1. ``concepts``: backbone F + concept head C, multi-label BCE (§1).
2. ``prototypes``: projector P + prototypes, multi-prototype contrastive loss; F and C frozen (§2).
   Ends with the prototype atlas hook (§6).
3. ``task_head``: linear H over the K·M max-pooled similarity scores, cross-entropy (§3).

Frozen groups use ``optax.multi_transform`` with ``set_to_zero``; the frozen parts of the forward
pass sit under ``stop_gradient`` so no backward pass runs through them. ``state["extra"]`` holds
the prototype mask (pruning, §4.3) and the atlas (nearest training image per prototype).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.common.errors import DataError
from jaxproto.core.method import Method, Phase
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.methods.csr import atlas as atlas_lib
from jaxproto.methods.csr import evaluate as evaluate_lib
from jaxproto.methods.csr import losses
from jaxproto.methods.csr.model import CsrModel, pool_scores, spatial_softmax_pool

log = logging.getLogger(__name__)

REFINE_MODES = ("mask", "mask_retrain")
_STAGE_GROUPS = {
    "stage1": {"backbone": "train", "concept_head": "train"},
    "stage2": {"projector": "projector", "prototypes": "prototypes"},
    "stage3": {"task_head": "head", "head_bn": "head"},
}


def target_of(record: Record) -> int:
    """The single task class of a record (CSR's head is a softmax over classes, spec §3.3)."""
    labels = np.asarray(record.labels)
    if labels.ndim != 1 or labels.sum() < 0.5:
        raise DataError(
            f"record {record.image_id!r} ({record.path}): labels {labels.tolist()} have no "
            "positive class (expected a one-hot class vector)"
        )
    return int(np.argmax(labels))


def concepts_of(record: Record, num_concepts: int) -> np.ndarray:
    """The record's K concept labels as float32; DataError if missing or mis-sized."""
    if record.concepts is None or np.shape(record.concepts) != (num_concepts,):
        raise DataError(
            f"record {record.image_id!r} ({record.path}): concepts "
            f"{None if record.concepts is None else np.shape(record.concepts)}, expected a vector "
            f"of {num_concepts} concept labels (CSR needs concept annotations)"
        )
    return np.asarray(record.concepts, np.float32)


class CsrExample:
    """Decode + CSR train augmentation (or eval transform); picklable for grain workers."""

    def __init__(self, records: Sequence[Record], image_size: int, num_concepts: int, train: bool):
        self.records = list(records)
        self.image_size = int(image_size)
        self.num_concepts = num_concepts
        self.train = train

    def example(self, record: Record, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        from jaxproto.data import transforms
        from jaxproto.data.images import load_image

        image = load_image(record.path)
        if self.train:
            x = transforms.CsrTrainTransform(self.image_size)(image, rng)
        else:
            x = transforms.eval_transform(image, self.image_size)
        return {
            "image": np.ascontiguousarray(x, np.float32),
            "concepts": concepts_of(record, self.num_concepts),
            "label": np.int32(target_of(record)),
        }

    def __call__(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.example(self.records[int(index)], rng)


def _backbone_tap(name: str) -> str:
    from jaxproto.backbones import get_spec

    return get_spec(name).default_taps[-1]


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
            from jaxproto.backbones import build_backbone

            backbone = build_backbone(m.backbone, taps=(m.get("tap") or _backbone_tap(m.backbone),))
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
        init_from = self.config.model.get("init_from", "")
        if init_from:
            from jaxproto.backbones import load_pretrained, merge_pretrained

            loaded = load_pretrained(init_from, self.config.model.backbone, with_head=False)
            out = {**out, **merge_pretrained(out, loaded, prefix="backbone")}
        return out

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
        return {
            "stage1": _grouped("stage1", {"train": optax.adamw(schedule(s1), weight_decay=s1.wd)}),
            "stage2": _grouped(
                "stage2",
                {
                    "projector": optax.adamw(schedule(s2), weight_decay=s2.wd),
                    "prototypes": optax.adamw(schedule(s2), weight_decay=s2.proto_wd),
                },
            ),
            "stage3": _grouped("stage3", {"head": optax.adamw(schedule(s3), weight_decay=s3.wd)}),
        }

    def phases(self) -> list[Phase]:
        o = self.config.optim
        before2 = (
            (self.init_prototypes_hook,) if self.config.model.proto_init == "sample_vectors" else ()
        )
        prune = (self.prune_hook,) if self.prune_ids else ()
        return [
            Phase("concepts", "stage1", loss="concepts", epochs=float(o.stage1.epochs)),
            Phase(
                "prototypes",
                "stage2",
                loss="prototypes",
                epochs=float(o.stage2.epochs),
                before=before2,
                after=(self.atlas_hook,),
            ),
            Phase(
                "task_head",
                "stage3",
                loss="task",
                epochs=float(o.stage3.epochs),
                before=prune if self.refine_mode == "mask_retrain" else (),
                after=prune if self.refine_mode == "mask" else (),
            ),
        ]

    def train_data(self, phase: Phase, records: Sequence[Record]):
        from jaxproto.data import samplers

        seed = int(self.config.train.seed) + 7919 * [p.name for p in self.phases()].index(
            phase.name
        )
        return samplers.ShuffleSampler(len(records), seed), CsrExample(
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
        return CsrExample([], self.image_size, self.num_concepts, train=False).example(record, None)

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

    # ------------------------------------------------------------------ hooks
    def atlas_hook(self, ctx, state):
        """End of stage 2: nearest training image per prototype (Eq. 11), hit counts, HTML."""
        records = ctx.index.split("train")
        concepts = np.stack([concepts_of(r, self.num_concepts) for r in records])
        builder = atlas_lib.AtlasBuilder(np.asarray(jax.device_get(state["params"]["prototypes"])))
        for idx, out in ctx.stream_predictions(state, records):
            v = np.asarray(jax.device_get(out["v_proj"]))[: len(idx)]
            builder.add(v, concepts[idx] > 0.5, idx)
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
        records = ctx.index.split("train")
        concepts = np.stack([concepts_of(r, self.num_concepts) for r in records]) > 0.5
        vectors = np.zeros(
            (len(records), self.num_concepts, int(self.config.model.proj_dim)), np.float32
        )
        for idx, out in ctx.stream_predictions(state, records):
            vectors[idx] = np.asarray(jax.device_get(out["v_proj"]))[: len(idx)]
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


def _grouped(stage: str, txs: dict[str, optax.GradientTransformation]):
    groups = _STAGE_GROUPS[stage]

    def labels(params):
        return {
            name: jax.tree.map(lambda _, n=name: groups.get(n, "frozen"), sub)
            for name, sub in params.items()
        }

    return optax.multi_transform({**txs, "frozen": optax.set_to_zero()}, labels)


def predict_outputs(model: CsrModel, state: dict, images: jax.Array, clip_negative: str) -> dict:
    """Inference outputs: class logits/probs, concept logits/probs, per-concept maps (max over the
    concept's unpruned prototypes of S), best prototype per concept, projected concept vectors."""
    mask = state["extra"]["proto_mask"]

    def fwd(mdl, x):
        f = mdl.features(x, train=False)
        cam, z = mdl.concepts(f)
        v_proj = mdl.project(spatial_softmax_pool(f, cam), None, False)
        sims = mdl.similarity(f)
        s = pool_scores(sims, clip_negative=clip_negative, proto_mask=mask)
        return mdl.head(s, train=False), z, v_proj, sims, s

    logits, z, v_proj, sims, s = model.apply(
        {"params": state["params"], "batch_stats": state["batch_stats"]}, images, method=fwd
    )
    alive = mask[None, :, :, None, None] > 0
    b, k, m = sims.shape[:3]
    return {
        "logits": logits,
        "probs": jax.nn.softmax(logits, axis=-1),
        "concept_logits": z,
        "concept_probs": jax.nn.sigmoid(z),
        "concept_maps": jnp.max(jnp.where(alive, sims, -1.0), axis=2),
        "best_prototype": jnp.argmax(s.reshape(b, k, m), axis=-1),
        "v_proj": v_proj,
        "alive_prototypes": jnp.full((b,), jnp.sum(mask), jnp.float32),
    }


def _put_like(value, like: jax.Array) -> jax.Array:
    value = jnp.asarray(value, like.dtype)
    sharding = getattr(like, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else value


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

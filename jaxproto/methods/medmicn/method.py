"""Med-MICN as a trainer Method (specs/medmicn.md): one phase, AdamW (torch weight decay 0.01,
per-backbone learning rate, no schedule), L = L_task + 0.1·L_c + 0.1·L_neural. Deviation behind
a flag (the synthetic variant uses it): a first phase without L_neural (``dcr_warmup_epochs``).

``predict`` runs the network twice: eval-mode BatchNorm (the ``fair`` protocol; the plain keys)
and train-mode BatchNorm on the batch itself (the code never calls ``model.eval()``: the
``faithful`` protocol; ``faithful_*`` keys), so ``evaluate`` can report both (§8).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.backbones import get_spec, init_with_pretrained
from jaxproto.common.errors import ConfigError
from jaxproto.core import outputs
from jaxproto.core.method import Converter, ExplainRequest, Method, Phase
from jaxproto.data import samplers, synthetic_concepts
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.methods.medmicn import convert, evaluation, explain, losses
from jaxproto.methods.medmicn import data as data_lib
from jaxproto.methods.medmicn.model import MedMicnModel

log = logging.getLogger(__name__)

RULE_KEYS = ("fused", "y_neural", "concept_probs", "sign", "relevance")


def build_model(config: ml_collections.ConfigDict, num_concepts: int, num_classes: int):
    """The MedMicnModel described by ``config.model``."""
    m = config.model
    return MedMicnModel(
        backbone=m.backbone,
        num_concepts=num_concepts,
        num_classes=num_classes,
        backbone_feature=m.backbone_feature,
        pre_proj_dim=int(m.pre_proj_dim),
        pre_proj_dropout=float(m.pre_proj_dropout),
        emb_size=int(m.emb_size),
        fusion_hidden=tuple(int(w) for w in m.fusion_hidden),
        fusion_dropout=tuple(float(d) for d in m.fusion_dropout),
        dcr_temperature=float(m.dcr_temperature),
        relevance_gate=m.relevance_gate,
        torch_init=bool(m.torch_init),
        cam_tap=m.cam_tap,
        compute_dtype=m.get("compute_dtype", "float32"),
        conv1x1=m.get("conv1x1", "xla"),
        stem_conv=m.get("stem_conv", "xla"),
        conv_backend=m.get("conv_backend", "xla"),
    )


class MedMicnMethod(Method):
    """Concept embeddings + DCR rules + fused prediction (NeurIPS 2024)."""

    # Its own protocols (specs/medmicn.md §8): faithful = the paper's (best test epoch), fair =
    # validation selection; eval.protocol -> the split model selection uses (core.protocol).
    PROTOCOLS = {"faithful": "test", "fair": "val"}

    def __init__(self, config: ml_collections.ConfigDict, index: DatasetIndex):
        super().__init__(config, index)
        self.num_concepts = len(index.concept_names)
        if self.num_concepts == 0:
            raise ValueError(
                f"dataset {index.name!r} has no concept names: Med-MICN needs a concept table "
                "(see the dataset's *_concept_csv option or the pseudo-labeller)"
            )
        if index.multilabel:
            raise ValueError(f"dataset {index.name!r} is multi-label; Med-MICN is single-label")
        self.image_size = int(config.model.image_size)
        self.model = build_model(config, self.num_concepts, index.num_classes)
        self.model.feature_tap()  # validates model.backbone_feature
        cache = bool(config.get("input", {}).get("cache_images", False))
        self._eval_example = data_lib.MedMicnExample(
            [], self.image_size, int(config.model.resize), 0, cache=cache
        )
        if config.eval.protocol not in evaluation.PROTOCOLS:
            raise ValueError(
                f"eval.protocol must be one of {evaluation.PROTOCOLS}, got {config.eval.protocol!r}"
            )

    # ------------------------------------------------------------------ state
    def init(self, rng: jax.Array) -> dict:
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        variables = self.model.init({"params": rng, "dropout": rng}, x, train=False)
        out = {
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "extra": {},
        }
        with_head = self.config.model.backbone_feature == "imagenet_logits"
        return init_with_pretrained(
            out, self.config.model.init_from, self.config.model.backbone, with_head=with_head
        )

    def optimizers(self, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
        o = self.config.optim
        tx = optax.adamw(o.lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
        return {"adamw": tx}

    def phases(self) -> list[Phase]:
        """One joint phase, or with ``optim.dcr_warmup_epochs`` a first phase without the neural
        loss (``concepts``) and the joint rest, one data stream and one AdamW state."""
        total = float(self.config.optim.epochs)
        warm = float(self.config.optim.get("dcr_warmup_epochs", 0.0))
        if not 0.0 <= warm < total:
            raise ConfigError(
                f"optim.dcr_warmup_epochs={warm} must be in [0, optim.epochs={total})"
            )
        if not warm:
            return [Phase("train", "adamw", epochs=total)]
        return [
            Phase("concepts", "adamw", loss="concepts", epochs=warm, stream="train"),
            Phase("train", "adamw", epochs=total - warm, stream="train"),
        ]

    def train_data(self, phase: Phase, records: Sequence[Record]):
        example = data_lib.MedMicnExample(
            records,
            self.image_size,
            int(self.config.model.resize),
            self.num_concepts,
            self.config.input.augment,
            bool(self.config.input.cache_images),
        )
        for r in records[:1]:
            example.example(r, None)  # fail early, naming the record, when concepts are missing
        return samplers.ShuffleSampler(len(records), int(self.config.train.seed)), example

    # ------------------------------------------------------------------ forward / loss
    def forward(self, params, batch_stats, images, train: bool, rng: jax.Array | None = None):
        """Network outputs; train-mode BN also returns the updated statistics."""
        variables = {"params": params, "batch_stats": batch_stats}
        rngs = {"dropout": rng if rng is not None else jax.random.key(0)}
        if train:
            return self.model.apply(
                variables, images, train=True, rngs=rngs, mutable=["batch_stats"]
            )
        return self.model.apply(variables, images, train=False), None

    def loss(self, params, state, batch, rng, phase):
        out, upd = self.forward(params, state["batch_stats"], batch["image"], True, rng)
        c = self.config.loss
        loss, terms = losses.total_loss(
            out,
            batch["label"],
            batch["concepts"],
            task_mode=c.task_loss,
            w_task=float(c.w_task),
            w_concept=float(c.w_concept),
            w_neural=0.0 if phase.loss == "concepts" else float(c.w_neural),
        )
        terms["task_acc"] = jnp.mean(jnp.argmax(out["fused"], -1) == batch["label"])
        terms["concept_acc"] = jnp.mean((out["concept_probs"] > 0.5) == (batch["concepts"] > 0.5))
        return loss, (terms, {"batch_stats": upd["batch_stats"]})

    # ------------------------------------------------------------------ inference
    def eval_example(self, record: Record) -> dict[str, np.ndarray]:
        return self._eval_example.example(record, None)

    def faithful_feasible(self, batch_size: int) -> bool:
        """Whether train-mode BatchNorm (the faithful protocol) gets at least 2 values per
        channel at the backbone's coarsest map for ``batch_size`` images: one image whose last
        map is 1×1 (e.g. 32 px into a stride-32 backbone) has none to normalise (torch raises)."""
        spec = get_spec(self.config.model.backbone)
        stride = max(s for _, s in spec.tap_info(**spec.config).values())
        side = -(-self.image_size // stride)
        return batch_size * side * side >= 2

    def predict(self, state, batch) -> dict[str, jax.Array]:
        fair, _ = self.forward(state["params"], state["batch_stats"], batch["image"], False)
        b = batch["image"].shape[0]
        if self.faithful_feasible(b):
            faithful, _ = self.forward(state["params"], state["batch_stats"], batch["image"], True)
        else:  # predict/explain of single small images: only evaluate reads faithful outputs
            log.info(
                "faithful outputs skipped for a batch of %d at %d px (NaN)", b, self.image_size
            )
            faithful = {k: jnp.full_like(fair[k], jnp.nan) for k in RULE_KEYS}
        return {
            "faithful_valid": jnp.full((b,), self.faithful_feasible(b)),
            outputs.LOGITS: fair["fused_logits"],
            outputs.PROBS: fair["fused"],
            outputs.CONCEPT_PROBS: fair["concept_probs"],
            outputs.CONCEPT_LOGITS: fair["concept_logits"],
            outputs.FEATURES: fair["feature"],
            **{k: fair[k] for k in RULE_KEYS},
            **{f"faithful_{k}": faithful[k] for k in RULE_KEYS},
        }

    def planted_rules(self) -> dict[str, list] | None:
        """The true rule per class when the data are a synthetic concept-rule set."""
        like = self.config.data.get("like", "") if self.config.data.name == "synthetic" else ""
        return synthetic_concepts.planted_rules(like) if like in synthetic_concepts.RULES else None

    def evaluate(self, predictions: dict[str, np.ndarray], records: Sequence[Record]) -> dict:
        if not np.all(predictions["faithful_valid"]):
            raise ConfigError(
                "the faithful protocol (train-mode BatchNorm on each test batch) needs at least 2 "
                f"values per channel at the backbone's last map; model.image_size="
                f"{self.image_size} with train.eval_batch_size="
                f"{self.config.train.eval_batch_size} gives 1: raise either"
            )
        labels = np.array([data_lib.target_of(r) for r in records])
        has = all(r.concepts is not None for r in records)
        concepts = (
            np.stack([data_lib.concepts_of(r, self.num_concepts) for r in records]) if has else None
        )
        return evaluation.evaluate(
            predictions,
            labels,
            concepts,
            self.class_names(),
            list(self.index.concept_names),
            self.config.eval.protocol,
            self.planted_rules(),
        )

    def summarize(self, result: dict) -> str:
        return evaluation.format_result(result)

    def prediction_columns(self, predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols = {
            f"p_{n}": predictions[outputs.PROBS][:, i] for i, n in enumerate(self.class_names())
        }
        cols.update(
            {f"neural_{n}": predictions["y_neural"][:, i] for i, n in enumerate(self.class_names())}
        )
        cp = predictions[outputs.CONCEPT_PROBS]
        cols.update({f"c_{n}": cp[:, i] for i, n in enumerate(self.index.concept_names)})
        return cols

    def explain(self, state, request: ExplainRequest) -> dict[str, str]:
        return explain.explain(self, state, request)

    @classmethod
    def converters(cls) -> dict[str, Converter]:
        run = functools.partial(convert.run, method_cls=cls)
        return {"medmicn": Converter(convert.HELP, convert.add_arguments, run)}

    def cam_family(self) -> str:
        return get_spec(self.config.model.backbone).family

"""CFN as a jaxproto Method: the "opaque" phase trains the classifier through the generic trainer
(CE, or BCE for multi-label MIMIC; AdamW, constant lr, the code's augmentation); its end-of-phase
hook runs the resumable concept stages (``stages.py``) into ``<workdir>/cfn/``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.backbones import init_with_pretrained
from jaxproto.backbones.classifier import Classifier
from jaxproto.core import metrics as metrics_lib
from jaxproto.core.method import ExplainRequest, Method, Phase
from jaxproto.data import samplers
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.methods.cfn import data as data_lib
from jaxproto.methods.cfn import explain as explain_lib
from jaxproto.methods.cfn.stages import StageRunner


class CfnMethod(Method):
    """Opaque classifier + CFN concept bottleneck built from its embeddings."""

    def __init__(self, config, index):
        super().__init__(config, index)
        m = config.model
        self.image_size = int(m.image_size)
        self.clip_norm = bool(m.clip_norm)
        self.net = Classifier(m.backbone, m.tap, index.num_classes)

    def init(self, rng):
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        variables = self.net.init(rng, x, train=False)
        out = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        out["extra"] = {}
        return init_with_pretrained(out, self.config.model.init_from, self.config.model.backbone)

    def optimizers(self, steps_per_epoch):
        o = self.config.optim
        return {"opt": optax.adamw(float(o.lr), weight_decay=float(o.weight_decay))}

    def phases(self):
        return [
            Phase(
                "opaque",
                optimizer="opt",
                epochs=float(self.config.train.epochs),
                after=(self.run_stages,),
            )
        ]

    def run_stages(self, ctx, state):
        """End-of-phase hook: every CFN stage after the opaque model (skips finished ones)."""
        StageRunner(ctx, self, state).run()
        return state

    def train_data(self, phase, records):
        sampler = samplers.ShuffleSampler(len(records), int(self.config.train.seed))
        example = data_lib.TrainExample(
            records, self.image_size, self.clip_norm, self.config.augment
        )
        return sampler, example

    def _apply(self, params, batch_stats, images, train):
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            return self.net.apply(variables, images, train=True, mutable=["batch_stats"])
        return self.net.apply(variables, images, train=False), None

    def loss(self, params, state, batch, rng, phase):
        (logits, _), upd = self._apply(params, state["batch_stats"], batch["image"], True)
        if self.index.multilabel:
            loss = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean()
        else:
            loss = optax.softmax_cross_entropy(logits, batch["labels"]).mean()
        return loss, ({}, {"batch_stats": upd["batch_stats"]})

    def eval_example(self, record):
        return {"image": data_lib.eval_image(record.path, self.image_size, self.clip_norm)}

    def eval_example_path(self, path: str) -> np.ndarray:
        """The test-time input for an image file (explain)."""
        return data_lib.eval_image(path, self.image_size, self.clip_norm)

    def predict(self, state, batch):
        (logits, emb), _ = self._apply(state["params"], state["batch_stats"], batch["image"], False)
        probs = jax.nn.sigmoid(logits) if self.index.multilabel else jax.nn.softmax(logits)
        return {"logits": logits, "probs": probs, "embedding": emb}

    def evaluate(self, predictions, records):
        labels = np.stack([r.labels for r in records])
        rep = metrics_lib.classification_report(labels, predictions["probs"], self.class_names())
        rep["accuracy"] = cbm_lib.accuracy(labels, predictions["logits"], self.index.multilabel)
        return rep

    def explain(self, state, request: ExplainRequest):
        return explain_lib.explain(self, request)

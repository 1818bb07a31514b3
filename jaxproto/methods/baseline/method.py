"""The black-box baseline every paper compares against: backbone -> global average pooling ->
linear head (``backbones.classifier.Classifier``), multi-label BCE (or multi-class
cross-entropy), Adam with cosine decay. ``predict`` also returns the pooled backbone features
(``outputs.FEATURES``, for the export's out-of-distribution statistics)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.backbones import init_with_pretrained
from jaxproto.backbones.classifier import Classifier
from jaxproto.core import metrics as metrics_lib
from jaxproto.core import outputs
from jaxproto.core.method import Method, Phase
from jaxproto.data import samplers, transforms
from jaxproto.data.images import load_image
from jaxproto.methods.baseline.data import TrainExample


class BaselineMethod(Method):
    """Multi-label (sigmoid) or multi-class (softmax) classifier."""

    def __init__(self, config, index):
        super().__init__(config, index)
        m = config.model
        self.image_size = int(m.image_size)
        self.net = Classifier(
            m.backbone,
            m.tap,
            index.num_classes,
            m.get("compute_dtype", "float32"),
            m.get("conv1x1", "xla"),
            m.get("stem_conv", "xla"),
            m.get("conv_backend", "xla"),
        )

    def init(self, rng):
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        variables = self.net.init(rng, x, train=False)
        out = {
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "extra": {},
        }
        return init_with_pretrained(
            out, self.config.model.get("init_from", ""), self.config.model.backbone
        )

    def optimizers(self, steps_per_epoch):
        o = self.config.optim
        total = max(1, int(round(self.config.train.epochs * steps_per_epoch)))
        lr = optax.cosine_decay_schedule(o.lr, total)
        if o.optimizer == "adamw":
            tx = optax.adamw(lr, weight_decay=o.weight_decay)
        elif o.optimizer == "sgd":
            tx = optax.chain(optax.add_decayed_weights(o.weight_decay), optax.sgd(lr, momentum=0.9))
        else:
            raise ValueError(f"optim.optimizer must be 'adamw' or 'sgd', got {o.optimizer!r}")
        return {"opt": tx}

    def phases(self):
        return [Phase("train", optimizer="opt", epochs=float(self.config.train.epochs))]

    def train_data(self, phase, records):
        return samplers.ShuffleSampler(len(records), int(self.config.train.seed)), TrainExample(
            records, self.image_size
        )

    def _apply(self, params, batch_stats, images, train):
        """((logits, pooled features), batch-stat updates or None)."""
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            return self.net.apply(variables, images, train=True, mutable=["batch_stats"])
        return self.net.apply(variables, images, train=False), None

    def loss(self, params, state, batch, rng, phase):
        (logits, _), upd = self._apply(params, state["batch_stats"], batch["image"], True)
        labels = batch["labels"]
        if self.index.multilabel:
            loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
        else:
            loss = optax.softmax_cross_entropy(logits, labels).mean()
        return loss, ({}, {"batch_stats": upd["batch_stats"]})

    def eval_example(self, record):
        image = transforms.eval_transform(load_image(record.path), self.image_size)
        return {"image": image}

    def predict(self, state, batch):
        (logits, pooled), _ = self._apply(
            state["params"], state["batch_stats"], batch["image"], False
        )
        probs = jax.nn.sigmoid(logits) if self.index.multilabel else jax.nn.softmax(logits)
        return {
            outputs.LOGITS: logits,
            outputs.PROBS: probs,
            outputs.FEATURES: pooled.astype(jnp.float32),
        }

    def evaluate(self, predictions, records):
        labels = np.stack([r.labels for r in records])
        keep = [i for i in range(self.index.num_classes) if i != self.index.background_class]
        names = [self.index.class_names[i] for i in keep]
        return metrics_lib.classification_report(
            labels[:, keep], predictions[outputs.PROBS][:, keep], names
        )

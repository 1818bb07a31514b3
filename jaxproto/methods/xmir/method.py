"""X-MIR training and evaluation (specs/xmir.md §2-§3) as a :class:`Method`.

One phase: batch-all triplet loss (margin 0.2) on P-classes x K-images batches from
``PKSampler``, Adam 1e-4. An "epoch" is one pass of the PK sampler (ends when the smallest
class runs out: 15 steps on ISIC, 31 on COVIDx), as in the original. ``loss.anomaly`` leaves
``loss.anomaly_class`` out of training (P = classes - 1) and, after training, scores test images
by their distance to the training-class centroids (§2.5), written to ``anomaly.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.common.errors import DataError
from jaxproto.core.method import Method, Phase
from jaxproto.data import samplers, transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Record
from jaxproto.kernels import saliency
from jaxproto.methods.xmir.losses import batch_all_triplet_loss, l2_normalize
from jaxproto.methods.xmir.metrics import anomaly_measures, anomaly_scores, retrieval_metrics
from jaxproto.methods.xmir.model import XmirNet

log = logging.getLogger(__name__)

SALIENCY_METHODS = ("sbsm", "simatt", "simcam")


def class_labels(records: Sequence[Record]) -> np.ndarray:
    """Integer class of each single-label record (its one-hot label vector's arg-max)."""
    out = np.empty((len(records),), np.int64)
    for i, r in enumerate(records):
        if np.count_nonzero(r.labels) != 1:
            raise DataError(
                f"{r.path}: X-MIR needs exactly one class per image, got labels {r.labels}"
            )
        out[i] = int(np.argmax(r.labels))
    return out


class SubsetSampler:
    """Runs ``inner`` over a subset of the records and maps its indices back to all records."""

    def __init__(self, inner, subset: np.ndarray):
        self.inner = inner
        self.subset = np.asarray(subset)

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int) -> np.ndarray:
        return self.subset[self.inner.epoch(epoch)]


class TrainExample:
    """Decode -> X-MIR train augmentation; picklable for grain workers."""

    def __init__(
        self,
        records: Sequence[Record],
        labels: np.ndarray,
        image_size: int,
        resize: int,
        rand_resize: bool,
    ):
        self.paths = [r.path for r in records]
        self.labels = labels
        self.transform = transforms.XmirTrainTransform(image_size, resize, rand_resize)

    def __call__(self, index, rng: np.random.Generator) -> dict:
        i = int(index)
        image = self.transform(load_image(self.paths[i]), rng)
        return {"image": np.ascontiguousarray(image, np.float32), "label": np.int32(self.labels[i])}


class XmirMethod(Method):
    """Triplet-loss retrieval embedder with similarity saliency."""

    def __init__(self, config, index):
        super().__init__(config, index)
        m, lc = config.model, config.loss
        self.image_size = int(m.image_size)
        # shorter side before the centre crop: 256 for 224 (§1), scaled for other sizes
        self.resize = int(m.get("resize", 0)) or round(self.image_size * 256 / 224)
        self.net = XmirNet(
            arch=m.backbone,
            embedding_dim=int(m.embedding_dim),
            bn_running_var=m.get("bn_running_var", "unbiased"),
        )
        self.margin = float(lc.margin)
        self.anomaly_class: int | None = None
        if lc.anomaly:
            if lc.anomaly_class not in index.class_names:
                raise ValueError(
                    f"loss.anomaly_class={lc.anomaly_class!r} is not a class of "
                    f"{index.name}: {index.class_names}"
                )
            self.anomaly_class = index.class_names.index(lc.anomaly_class)
        n_train_classes = index.num_classes - int(bool(lc.anomaly))
        self.P = int(lc.classes_per_batch) or n_train_classes
        self.K = int(lc.samples_per_class)
        if self.P * self.K != int(config.train.batch_size):
            raise ValueError(
                f"train.batch_size={config.train.batch_size} must equal "
                f"loss.classes_per_batch x loss.samples_per_class = {self.P}x{self.K}"
            )

    # -- training -----------------------------------------------------------------------------

    def init(self, rng):
        x = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
        variables = jax.jit(functools.partial(self.net.init, train=False))(rng, x)
        out = {
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "extra": {},
        }
        init_from = self.config.model.get("init_from", "")
        if init_from:
            from jaxproto.backbones import load_pretrained, merge_pretrained

            pretrained = load_pretrained(init_from, self.config.model.backbone, drop_head=True)
            out = {**out, **merge_pretrained(out, pretrained, prefix="backbone")}
            log.info("backbone initialised from %s", init_from)
        return out

    def optimizers(self, steps_per_epoch):
        o = self.config.optim
        return {"adam": optax.adam(float(o.lr), b1=0.9, b2=0.999, eps=1e-8)}

    def _sampler(self, records: Sequence[Record]):
        labels = class_labels(records)
        subset = np.arange(len(records))
        if self.anomaly_class is not None:
            subset = np.flatnonzero(labels != self.anomaly_class)
        inner = samplers.PKSampler(labels[subset], self.P, self.K, int(self.config.train.seed))
        return SubsetSampler(inner, subset), labels

    def phases(self):
        # Length in PK-sampler epochs (spec §2.2), not in passes over the records.
        sampler, _ = self._sampler(self.index.split("train"))
        steps = int(round(float(self.config.train.epochs) * len(sampler) / (self.P * self.K)))
        after = (self._anomaly_hook,) if self.anomaly_class is not None else ()
        return [Phase("train", optimizer="adam", steps=max(1, steps), after=after)]

    def train_data(self, phase, records):
        sampler, labels = self._sampler(records)
        rand_resize = bool(self.config.model.get("rand_resize", False))
        return sampler, TrainExample(records, labels, self.image_size, self.resize, rand_resize)

    def loss(self, params, state, batch, rng, phase):
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        emb, upd = self.net.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        loss, frac = batch_all_triplet_loss(emb, batch["label"], self.margin)
        return loss, ({"frac_positive_triplets": frac}, {"batch_stats": upd["batch_stats"]})

    # -- inference ----------------------------------------------------------------------------

    def eval_example(self, record):
        image = transforms.xmir_eval_transform(
            load_image(record.path), self.image_size, self.resize
        )
        return {"image": np.asarray(image, np.float32)}

    def predict(self, state, batch):
        return {"embedding": self.embed(_variables(state), batch["image"])}

    def evaluate(self, predictions, records):
        lc = self.config.loss
        return retrieval_metrics(
            predictions["embedding"],
            class_labels(records),
            ks=tuple(self.config.get("eval_ks", (1, 5, 10))),
            map_includes_self=bool(lc.get("map_includes_self", True)),
        )

    def _anomaly_hook(self, ctx, state):
        """Centroid anomaly scores of the test split (§2.5) -> workdir/anomaly.json."""
        train = [
            r for r in ctx.index.split("train") if int(np.argmax(r.labels)) != self.anomaly_class
        ]
        test = ctx.index.split(self.config.train.eval_split)

        def embed(records):
            out = np.zeros((len(records), 0), np.float32)
            for idx, pred in ctx.stream_predictions(state, records):
                e = np.asarray(jax.device_get(pred["embedding"]))[: len(idx)]
                if out.shape[1] == 0:
                    out = np.zeros((len(records), e.shape[1]), np.float32)
                out[idx] = e
            return out

        scores = anomaly_scores(embed(train), class_labels(train), embed(test))
        result = anomaly_measures(scores, class_labels(test) == self.anomaly_class)
        log.info("anomaly detection (%s): %s", self.index.class_names[self.anomaly_class], result)
        if ctx.is_main_process:
            with open(os.path.join(ctx.workdir, "anomaly.json"), "w") as f:
                json.dump(result, f, indent=1)
        return state

    # -- functions of explicit variables, for search and saliency (stable for jit caching) ----

    def embed(self, variables, images):
        """Unit embeddings (B, D) of normalised NHWC images."""
        return self.net.apply(variables, images, train=False)

    def features(self, variables, images):
        """Final ReLU maps (B, h, w, C)."""
        return self.net.apply(variables, images, train=False, method=XmirNet.features)

    def head(self, variables, feats):
        """Unnormalised embeddings from final ReLU maps."""
        return self.net.apply(variables, feats, method=XmirNet.head)

    def gap_embed(self, variables, images):
        """The original insertion/deletion scorer's embedding: L2(GAP(A)), fc dropped (§5.1)."""
        return l2_normalize(jax.nn.relu(self.features(variables, images)).mean(axis=(1, 2)))

    def saliency_maps(
        self,
        variables,
        query,
        retrieved,
        which=SALIENCY_METHODS,
        *,
        sbsm_window=24,
        sbsm_stride=5,
        chunk_size=250,
        batch_sharding=None,
    ):
        """Maps (H, W) of the *retrieved* image for each method in ``which`` (§4)."""
        out = {}
        unknown = set(which) - set(SALIENCY_METHODS)
        if unknown:
            raise ValueError(
                f"unknown saliency methods {sorted(unknown)}; valid: {SALIENCY_METHODS}"
            )
        if "sbsm" in which:
            q = self.embed(variables, query[None])[0]
            out["sbsm"] = saliency.sbsm_saliency(
                self.embed,
                variables,
                q,
                retrieved,
                window=sbsm_window,
                stride=sbsm_stride,
                chunk_size=chunk_size,
                batch_sharding=batch_sharding,
            )
        if "simatt" in which:
            out["simatt"] = saliency.simatt_maps(
                self.features, self.head, variables, query, retrieved
            )[1]
        if "simcam" in which:
            feats = self.features(variables, jnp.stack([query, retrieved]))
            fc = variables["params"].get("fc", {})
            out["simcam"] = saliency.simcam_maps(
                feats[0], feats[1], retrieved.shape[:2], fc.get("kernel"), fc.get("bias")
            )[1]
        return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _variables(state) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}

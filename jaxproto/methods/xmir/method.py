"""X-MIR training and evaluation (specs/xmir.md §2-§3) as a :class:`Method`.

One phase: batch-all triplet loss (margin 0.2) on P-classes x K-images batches from
``PKSampler``, Adam 1e-4. An "epoch" is one pass of the PK sampler (ends when the smallest
class runs out: 15 steps on ISIC, 31 on COVIDx), as in the original. ``loss.anomaly`` leaves
``loss.anomaly_class`` out of training (P = classes - 1) and, after training, scores test images
by their distance to the training-class centroids (§2.5), written to ``anomaly.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.backbones import init_with_pretrained
from jaxproto.common.errors import UserError
from jaxproto.core import outputs
from jaxproto.core.method import Converter, Method, Phase
from jaxproto.data.records import Record
from jaxproto.kernels.prototypes import l2_normalize
from jaxproto.methods.xmir import convert, saliency
from jaxproto.methods.xmir.data import (
    PKSampler,
    SubsetSampler,
    TrainExample,
    class_labels,
    eval_transform,
    load_example_image,
)
from jaxproto.methods.xmir.losses import batch_all_triplet_loss
from jaxproto.methods.xmir.metrics import anomaly_measures, anomaly_scores, retrieval_metrics
from jaxproto.methods.xmir.model import XmirNet

log = logging.getLogger(__name__)

# The original explanations.py's methods a user reaches for (§4), the paper's three first.
SALIENCY_METHODS = (
    "sbsm",
    "simatt",
    "simcam",
    "sbsm_mask",  # SBSMMask: the query outside ``query_mask`` set to the mean colour
    "sbsm_blur",  # SBSMMask "blur": the query outside ``query_mask`` blurred
    "sbsm_feature",  # SBSMFeature: occlusion on the retrieved image's explanation layer
    "simscorecam",  # SimScoreCAM
    "simatt_triplet",  # SimAtt with a negative: w = (1 - |q - p|) |q - n|
    "self_sbsm",  # --self-saliency: the retrieved image against itself
    "self_simatt",
    "self_simcam",
)


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
            compute_dtype=m.get("compute_dtype", "float32"),
            conv1x1=m.get("conv1x1", "xla"),
            stem_conv=m.get("stem_conv", "xla"),
            conv_backend=m.get("conv_backend", "xla"),
        )
        self.lung_mask_dir = str(config.data.get("lung_mask_dir", ""))
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
            out = init_with_pretrained(out, init_from, self.config.model.backbone)
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
        inner = PKSampler(labels[subset], self.P, self.K, int(self.config.train.seed))
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
        return sampler, TrainExample(
            records, labels, self.image_size, self.resize, rand_resize, self.lung_mask_dir
        )

    def loss(self, params, state, batch, rng, phase):
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        emb, upd = self.net.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        loss, frac = batch_all_triplet_loss(emb, batch["label"], self.margin)
        return loss, ({"frac_positive_triplets": frac}, {"batch_stats": upd["batch_stats"]})

    # -- inference ----------------------------------------------------------------------------

    def eval_example(self, record):
        image = load_example_image(record.path, self.lung_mask_dir)
        image = eval_transform(image, self.image_size, self.resize)
        return {"image": np.asarray(image, np.float32)}

    def predict(self, state, batch):
        variables = _variables(state)
        feats = self.net.apply(variables, batch["image"], method=XmirNet.features)
        emb = l2_normalize(self.net.apply(variables, feats, method=XmirNet.head))
        # GAP of the explanation layer (the final backbone map): the OOD features (core.ood).
        pooled = feats.mean(axis=(1, 2)).astype(jnp.float32)
        return {outputs.EMBEDDING: emb, outputs.FEATURES: pooled}

    def evaluate(self, predictions, records):
        lc = self.config.loss
        return retrieval_metrics(
            predictions[outputs.EMBEDDING],
            class_labels(records),
            ks=tuple(self.config.get("eval_ks", (1, 5, 10))),
            map_includes_self=bool(lc.get("map_includes_self", True)),
            no_positive=self.config.get("eval_no_positive", "miss"),
        )

    # -- what the CLIs need -------------------------------------------------------------------

    def prediction_columns(self, predictions):
        """None besides the image: an embedding has no per-image summary worth a column (its
        norm is 1, and nearest-class needs a labelled gallery: ``retrieve index``/``query``).
        Row i of ``<stem>_embeddings.npy`` is the embedding of CSV row i."""
        return {}

    def prediction_arrays(self, predictions):
        """``<stem>_embeddings.npy``: the (N, D) unit embeddings, one row per CSV row."""
        return {"embeddings": np.asarray(predictions[outputs.EMBEDDING], np.float32)}

    def explain(self, state, request):
        raise UserError(
            "X-MIR explains a retrieval, not one image: build a gallery with "
            "`python -m jaxproto.retrieve index --export EXPORT --images DIR --out INDEX`, then "
            f"`python -m jaxproto.retrieve query --index INDEX --image {request.image} --out DIR` "
            "writes the neighbours with SBSM/SimAtt/SimCAM saliency (index.html)"
        )

    def summarize(self, result):
        """Leave-one-out retrieval metrics, one per line, with what each one counts."""
        notes = {
            "mAP": "trapezoid AP; the query counts at the last rank"
            if self.config.loss.get("map_includes_self", True)
            else "trapezoid AP; the query excluded",
            "MAP@R": "mean average precision at R (R = other same-class items)",
            "mean_average_precision": "non-interpolated AP, the query excluded",
            "r_precision": "share of same-class items in the top R",
        }
        keys = [k for k in result if isinstance(result[k], int | float | np.number)]
        width = max((len(k) for k in keys), default=0)
        lines = ["leave-one-out retrieval (Euclidean distance of unit embeddings)"]
        for k in keys:
            if k.startswith("R@"):
                note = f"share of queries with a same-class item in the top {k[2:]}"
            elif k.startswith("P@"):
                note = f"mean share of same-class items in the top {k[2:]}"
            else:
                note = notes.get(k, "")
            lines.append(
                f"{k.ljust(width)}  {float(result[k]):.4f}" + (f"  ({note})" if note else "")
            )
        return "\n".join(lines)

    @classmethod
    def converters(cls):
        run = functools.partial(convert.run, method_cls=cls)
        return {"xmir": Converter(convert.HELP, convert.add_arguments, run)}

    def _anomaly_hook(self, ctx, state):
        """Centroid anomaly scores of the test split (§2.5) -> workdir/anomaly.json."""
        train = [
            r for r in ctx.index.split("train") if int(np.argmax(r.labels)) != self.anomaly_class
        ]
        test = ctx.index.split("test")  # a result, not model selection

        def embed(records):
            out = np.zeros((len(records), 0), np.float32)
            for idx, pred in ctx.stream_predictions(state, records):
                e = np.asarray(jax.device_get(pred[outputs.EMBEDDING]))[: len(idx)]
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

    @functools.cached_property
    def _compiled(self) -> dict:
        """``embed`` and ``features`` jitted once (saliency calls them outside a jitted kernel)."""
        return {"embed": jax.jit(self.embed), "features": jax.jit(self.features)}

    def gap_embed(self, variables, images):
        """The original insertion/deletion scorer's embedding: L2(GAP(A)), fc dropped (§5.1)."""
        return l2_normalize(self.features(variables, images).mean(axis=(1, 2)))

    def saliency_maps(
        self,
        variables,
        query,
        retrieved,
        which=SALIENCY_METHODS[:3],
        settings: SaliencySettings | None = None,
        *,
        negative=None,
        query_mask=None,
        batch_sharding=None,
    ):
        """Maps (H, W) of the *retrieved* image for each method in ``which`` (§4).

        ``negative`` (an image of another class) is needed by ``simatt_triplet``; ``query_mask``
        ((H, W), 1 = the query region to match; default the whole query) by ``sbsm_mask``,
        ``sbsm_blur``. ``self_*`` maps explain the retrieved image against itself."""
        s = settings or SaliencySettings()
        unknown = set(which) - set(SALIENCY_METHODS)
        if unknown:
            raise UserError(
                f"unknown saliency methods {sorted(unknown)}; valid: {', '.join(SALIENCY_METHODS)}"
            )
        if "simatt_triplet" in which and negative is None:
            raise UserError("simatt_triplet needs a negative image")
        sbsm = {
            "window": s.sbsm_window,
            "stride": s.sbsm_stride,
            "chunk_size": s.chunk_size,
            "batch_sharding": batch_sharding,
        }
        out = {}
        q = self._compiled["embed"](variables, query[None])[0]
        if "sbsm" in which:
            out["sbsm"] = saliency.sbsm_saliency(self.embed, variables, q, retrieved, **sbsm)
        for mode in ("mask", "blur"):
            if f"sbsm_{mode}" in which:
                mask = jnp.ones(query.shape[:2]) if query_mask is None else query_mask
                masked = saliency.mask_query(query, mask, mode, float(s.blur_sigma))
                qm = self._compiled["embed"](variables, masked[None])[0]
                out[f"sbsm_{mode}"] = saliency.sbsm_saliency(
                    self.embed, variables, qm, retrieved, **sbsm
                )
        if "sbsm_feature" in which:
            out["sbsm_feature"] = saliency.sbsm_feature_saliency(
                self.head,
                variables,
                q,
                self._compiled["features"](variables, retrieved[None])[0],
                retrieved.shape[:2],
                window=s.feature_window,
                stride=s.feature_stride,
            )
        if "simscorecam" in which:
            out["simscorecam"] = saliency.simscorecam_saliency(
                self.embed,
                self.features,
                variables,
                q,
                retrieved,
                masking=s.scorecam_masking,
                chunk_size=s.chunk_size,
                batch_sharding=batch_sharding,
            )
        pairs = {"simatt": (query, None), "simatt_triplet": (query, negative)}
        pairs["self_simatt"] = (retrieved, None)
        for name, (anchor, neg) in pairs.items():
            if name in which:
                out[name] = saliency.simatt_maps(
                    self.features, self.head, variables, anchor, retrieved, neg
                )[1]
        for name, anchor in (("simcam", query), ("self_simcam", retrieved)):
            if name in which:
                feats = self._compiled["features"](variables, jnp.stack([anchor, retrieved]))
                fc = variables["params"].get("fc", {})
                out[name] = saliency.simcam_maps(
                    feats[0], feats[1], retrieved.shape[:2], fc.get("kernel"), fc.get("bias")
                )[1]
        if "self_sbsm" in which:
            out["self_sbsm"] = saliency.sbsm_self_saliency(self.embed, variables, retrieved, **sbsm)
        return {k: np.asarray(out[k], np.float32) for k in which}


@dataclasses.dataclass(frozen=True)
class SaliencySettings:
    """The knobs of the saliency methods (``config.saliency``)."""

    sbsm_window: int = 24
    sbsm_stride: int = 5
    chunk_size: int = 250  # masked images per batched forward (a multiple of the devices)
    blur_sigma: float = 8.0  # SBSMMask "blur" (the original's default)
    feature_window: int = 1  # feature-space SBSM: cells of the explanation layer
    feature_stride: int = 1
    scorecam_masking: str = "multiply"  # or "matmul_compat" (the original's torch.matmul)

    @classmethod
    def from_config(cls, s, chunk_multiple: int = 1) -> SaliencySettings:
        """From ``config.saliency`` (missing keys take the defaults); ``chunk_size`` rounded
        up to a multiple of ``chunk_multiple`` (the number of devices it is sharded over)."""
        fields = {f.name: s.get(f.name, f.default) for f in dataclasses.fields(cls)}
        m = max(1, int(chunk_multiple))
        fields["chunk_size"] = max(m, -(-int(fields["chunk_size"]) // m) * m)
        return cls(**fields)


def _variables(state) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}

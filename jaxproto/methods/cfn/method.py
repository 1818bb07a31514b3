"""CFN as a jaxproto Method: the "opaque" phase trains the classifier through the generic trainer
(CE, or BCE for multi-label MIMIC; AdamW, constant lr, the code's augmentation); its end-of-phase
hook runs the resumable concept stages (``stages.py``) into ``<workdir>/cfn/``."""

from __future__ import annotations

import jax
import numpy as np
import optax

from jaxproto.backbones.classifier import Classifier, init_state
from jaxproto.core import metrics as metrics_lib
from jaxproto.core import outputs
from jaxproto.core.method import ExplainRequest, Method, Phase
from jaxproto.data import samplers
from jaxproto.methods.cfn import bottleneck
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.methods.cfn import data as data_lib
from jaxproto.methods.cfn import explain as explain_lib
from jaxproto.methods.cfn import report as report_lib
from jaxproto.methods.cfn.stages import StageRunner


class CfnMethod(Method):
    """Opaque classifier + CFN concept bottleneck built from its embeddings."""

    def __init__(self, config, index):
        super().__init__(config, index)
        m = config.model
        self.image_size = int(m.image_size)
        self.clip_norm = bool(m.clip_norm)
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
        return init_state(self.net, rng, self.image_size, self.config.model.init_from)

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

    def loss(self, params, state, batch, rng, phase):
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        (logits, _), upd = self.net.apply(
            variables, batch["image"], train=True, mutable=["batch_stats"]
        )
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
        variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
        logits, feats = self.net.apply(variables, batch["image"], train=False)
        probs = jax.nn.sigmoid(logits) if self.index.multilabel else jax.nn.softmax(logits)
        return {outputs.LOGITS: logits, outputs.PROBS: probs, outputs.FEATURES: feats}

    def _bottleneck(self) -> bottleneck.Bottleneck | None:
        """The workdir's or export's concept bottleneck when the model was loaded from one
        whose CFN stages have finished (``inference.load_for_inference`` sets provenance)."""
        source = self.provenance.get("source", "")
        if not source or not bottleneck.available(source):
            return None
        return bottleneck.load(source, self.config.cfn)

    def evaluate(self, predictions, records):
        """The opaque model's metrics; with a finished bottleneck also the CBM's on the same
        images (``opaque`` / ``cbm`` blocks, top level = CBM) and concept statistics."""
        labels = np.stack([r.labels for r in records])
        ml, names = bool(self.index.multilabel), self.class_names()
        opaque = cbm_lib.classification_metrics(labels, predictions[outputs.LOGITS], names, ml)
        cbm = self._bottleneck()
        if cbm is None:
            return opaque
        feats = np.asarray(predictions[outputs.FEATURES], np.float32)
        report_lib.check_source_model(cbm.root, feats, [r.image_id for r in records])
        logits, w, beta = cbm.scores(feats)
        result = cbm_lib.classification_metrics(labels, logits, names, ml)
        result["opaque"], result["cbm"] = opaque, dict(result)
        result["opaque_accuracy"], result["cbm_accuracy"] = opaque["accuracy"], result["accuracy"]
        result["cbm_over_opaque_accuracy"] = result["accuracy"] / max(opaque["accuracy"], 1e-12)
        result["concepts"] = report_lib.concept_statistics(cbm, feats, w, beta)
        return result

    def summarize(self, result: dict) -> str:
        if "opaque" not in result:
            text = metrics_lib.format_summary(result)
            return "opaque model (no finished concept bottleneck)\n" + text
        return report_lib.summary_text(result)

    def prediction_columns(self, predictions):
        """Per class the opaque model's probability, and with a finished bottleneck the CBM's
        (``cbm_<class>``)."""
        columns = super().prediction_columns(predictions)
        cbm = self._bottleneck()
        if cbm is not None:
            logits = cbm.scores(np.asarray(predictions[outputs.FEATURES], np.float32))[0]
            probs = cbm_lib.probabilities(logits, bool(self.index.multilabel))
            for i, name in enumerate(self.class_names()):
                columns[f"cbm_{name}"] = probs[:, i]
        return columns

    def export_files(self, workdir: str) -> dict[str, str]:
        return bottleneck.export_files(workdir)

    def explain(self, state, request: ExplainRequest):
        return explain_lib.explain(self, state, request)

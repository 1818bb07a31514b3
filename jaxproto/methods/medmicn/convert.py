"""Import an official Med-MICN checkpoint (``Neural_Concat_Model.state_dict()``, specs/medmicn.md
"Checkpoint conversion") into an evaluable jaxproto workdir.

Key layout (``models.py`` / ``train_skin_neural.py``): ``backbone.*`` (the complete torchvision
model, ImageNet head kept), ``concept_encoder.0`` (pre-projection Linear), ``concept_encoder.<k>
.concept_context_generators.<i>.0`` and ``.concept_prob_predictor.0`` (ConceptEmbedding, k = 2,
or 3 after a Dropout), ``task_predictor_neural.{sign_nn,filter_nn}.{0,2}`` (ConceptReasoningLayer),
``task_predictor.<j>`` (fusion MLP Linears in order) and ``task_concept_predictor.0`` (side head).
Linear (out, in) -> Dense kernel (in, out); the N context generators stack into one (N, h, 2e)
kernel; the backbone goes through ``jaxproto.backbones.convert_state_dict``.

CLI (``python -m jaxproto.convert medmicn``)::

    python -m jaxproto.convert medmicn --input ckpt.pth --config configs/medmicn_ddi.py \\
        --out runs/medmicn_official
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from jaxproto.backbones import convert_state_dict, read_state_dict
from jaxproto.common import trees
from jaxproto.common.config import load_config_file
from jaxproto.common.errors import CheckpointError
from jaxproto.core import checkpoint, trainer, workdir
from jaxproto.data import covidct, ddi, fitzpatrick, kermany, synthetic
from jaxproto.data.records import DatasetIndex

log = logging.getLogger(__name__)

HELP = "official Med-MICN Neural_Concat_Model state_dict -> an evaluable jaxproto workdir"

# registry name -> (class names, the data option naming the concept list)
_NAMES = {
    "ddi": (ddi.CLASS_NAMES, "ddi_concepts"),
    "covidct": (covidct.CLASS_NAMES, "covidct_concepts"),
    "kermany": (kermany.CLASS_NAMES, "kermany_concepts"),
    "fitzpatrick17k": (fitzpatrick.CLASS_NAMES, "fitzpatrick_concepts"),
}

_SHAPE_HINT = "check model.backbone, emb_size, the concept list, pre_proj_dim and fusion_hidden"


def _linear(sd: dict, prefix: str) -> dict:
    for leaf in ("weight", "bias"):
        if f"{prefix}.{leaf}" not in sd:
            raise CheckpointError(f"Med-MICN state_dict: missing key {prefix}.{leaf!s}")
    return {"kernel": np.asarray(sd.pop(f"{prefix}.weight")).T, "bias": sd.pop(f"{prefix}.bias")}


def _indices(sd: Mapping, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def convert_official(
    state_dict: Mapping[str, np.ndarray], config: ml_collections.ConfigDict
) -> dict[str, dict]:
    """Official state_dict -> {"params", "batch_stats"} for ``config.model``."""
    sd = {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state_dict.items()}
    m = config.model
    with_head = m.backbone_feature == "imagenet_logits"
    bb_sd = {k[len("backbone.") :]: sd.pop(k) for k in [k for k in sd if k.startswith("backbone.")]}
    if not bb_sd:
        raise CheckpointError("Med-MICN state_dict: no 'backbone.*' keys")
    bb = convert_state_dict(bb_sd, m.backbone, with_head=with_head, source_name="Med-MICN backbone")
    ce = _indices(sd, r"concept_encoder\.(\d+)\.concept_context_generators\.")
    if len(ce) != 1:
        raise CheckpointError("Med-MICN state_dict: no concept_encoder.<k>.ConceptEmbedding keys")
    emb = f"concept_encoder.{ce[0]}"
    gens = _indices(sd, rf"{re.escape(emb)}\.concept_context_generators\.(\d+)\.")
    ctx = [_linear(sd, f"{emb}.concept_context_generators.{i}.0") for i in gens]
    params = {
        "backbone": bb["params"],
        "pre_proj": _linear(sd, "concept_encoder.0"),
        "concepts": {
            "context_kernel": np.stack([c["kernel"] for c in ctx]),
            "context_bias": np.stack([c["bias"] for c in ctx]),
            "prob_head": _linear(sd, f"{emb}.concept_prob_predictor.0"),
        },
        "reasoning": {
            f"{net}_{j}": _linear(sd, f"task_predictor_neural.{net}.{j}")
            for net in ("sign_nn", "filter_nn")
            for j in (0, 2)
        },
        "side_head": _linear(sd, "task_concept_predictor.0"),
    }
    for n, j in enumerate(_indices(sd, r"task_predictor\.(\d+)\.weight")):
        params[f"fusion_{n}"] = _linear(sd, f"task_predictor.{j}")
    if sd:
        raise CheckpointError(f"unexpected keys in the Med-MICN state_dict: {sorted(sd)[:10]}")
    return {"params": params, "batch_stats": {"backbone": bb["batch_stats"]}}


def index_for_config(config: ml_collections.ConfigDict) -> DatasetIndex:
    """Class and concept names of the config's dataset, without reading any data."""
    d = config.data
    if d.name == "synthetic":
        spec = synthetic.LIKES[d.like]
        classes, concepts = spec.class_names, spec.concept_names
    elif d.name in _NAMES:
        classes, option = _NAMES[d.name]
        concepts = list(d[option])
    else:
        raise CheckpointError(f"Med-MICN conversion: unsupported data.name {d.name!r}")
    return DatasetIndex(
        name=d.name,
        class_names=list(classes),
        splits={},
        multilabel=False,
        concept_names=list(concepts),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="official Med-MICN .pth (state_dict)")
    parser.add_argument("--config", required=True, help="config file[:arg]")
    parser.add_argument("--out", required=True, help="output jaxproto workdir")


def run(args: argparse.Namespace, method_cls) -> int:
    """Converts ``args.input`` and writes the workdir ``args.out``."""
    config = load_config_file(args.config)
    index = index_for_config(config)
    method = method_cls(config, index)
    optimizers = method.optimizers(steps_per_epoch=1)
    state = trainer.init_state(method, optimizers, int(config.train.seed))
    converted = convert_official(read_state_dict(args.input), config)
    for key in ("params", "batch_stats"):
        trees.check_like(
            key,
            converted[key],
            state[key],
            "check model.backbone, emb_size, the concept list, pre_proj_dim and fusion_hidden",
        )
    state.update(jax.tree.map(lambda x: np.asarray(x, np.float32), converted))
    state["opt"] = {name: tx.init(state["params"]) for name, tx in optimizers.items()}
    checkpoint.write_initial_checkpoint(args.out, config, state, workdir.dataset_meta(index))
    log.info("wrote %s from %s", args.out, args.input)
    return 0

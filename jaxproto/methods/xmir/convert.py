"""Import an original X-MIR ``train.py`` checkpoint (specs/xmir.md "Checkpoint conversion").

The file is a raw ``state_dict`` of the original ``DenseNet121(embedding_dim=D)``: the torchvision
DenseNet features as ``densenet121.0.<features key>`` (725 tensors for DenseNet-121) plus, for the
"+256-d" variants, ``fc.weight`` (D, 1024) and ``fc.bias`` (D); the COVID 1024-d model has no
``fc``. The ``ResNet50`` wrapper's keys are ``resnet50.<i>.*`` (torchvision's children 0 = conv1,
1 = bn1, 4-7 = layer1-4) plus the optional ``fc``. ``module.`` prefixes (DataParallel) and a
``{"state_dict": ...}`` wrapper are accepted.

Conversion is strict: every backbone tensor of the target model must be present with its shape,
nothing may be left over, and the ``fc`` layer must match ``model.embedding_dim`` of the config
(a 256-d checkpoint with an embedding_dim=0 config is an error, never a silently dropped layer).

CLI (``XmirMethod.converters()`` contributes it as ``xmir``)::

    python -m jaxproto.convert xmir --input isic_densenet121_embed_256_seed_0_epoch_20_ckpt.pth \\
        --config configs/xmir_isic.py --out runs/xmir_isic_original
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from jaxproto.backbones import (
    CheckpointMismatchError,
    convert_state_dict,
    get_spec,
    read_state_dict,
)
from jaxproto.common.config import load_config_file
from jaxproto.common.errors import ConfigError
from jaxproto.core import checkpoint, trainer, workdir
from jaxproto.core.method import Method
from jaxproto.data import covidx, isic
from jaxproto.data.records import DatasetIndex
from jaxproto.data.synthetic import LIKES

log = logging.getLogger(__name__)

HELP = (
    "original X-MIR train.py checkpoint (densenet121.0.* / resnet50.N.* [+ fc]) -> an "
    "evaluable jaxproto workdir"
)

# The original ResNet50 wrapper is Sequential(*children[:-1]) of torchvision's resnet50.
_RESNET_CHILDREN = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}


def _resnet_key(key: str) -> str:
    m = re.fullmatch(r"resnet\d+\.(\d+)\.(.*)", key)
    if m is None or m[1] not in _RESNET_CHILDREN:
        return key  # left as is: reported as unexpected by the strict conversion
    return f"{_RESNET_CHILDREN[m[1]]}.{m[2]}"


def convert_checkpoint(
    state_dict: Mapping[str, np.ndarray], arch: str, embedding_dim: int, source: str = "checkpoint"
) -> dict:
    """Original X-MIR state_dict -> ``{"params", "batch_stats"}`` of ``XmirNet(arch,
    embedding_dim)`` (backbone under ``backbone``, the embedding layer as ``fc``)."""
    sd = {re.sub(r"^module\.", "", k): np.asarray(v) for k, v in state_dict.items()}
    fc = {name: sd.pop(f"fc.{name}") for name in ("weight", "bias") if f"fc.{name}" in sd}
    if fc and set(fc) != {"weight", "bias"}:
        raise CheckpointMismatchError(f"{source}: has fc.{next(iter(fc))} but not both fc tensors")
    dim = int(fc["weight"].shape[0]) if fc else 0
    if dim != int(embedding_dim):
        have = f"a {dim}-d embedding layer fc" if dim else "no embedding layer fc (GAP features)"
        raise ConfigError(
            f"{source} has {have} but the config says model.embedding_dim={embedding_dim}: "
            f"pass --config FILE.py:embedding_dim={dim}"
        )
    if get_spec(arch).family == "resnet":
        sd = {_resnet_key(k): v for k, v in sd.items()}
    backbone = convert_state_dict(sd, arch, with_head=False, source_name=source)
    params = {"backbone": backbone["params"]}
    if fc:
        params["fc"] = {"kernel": fc["weight"].T.astype(np.float32), "bias": fc["bias"]}
    return {"params": params, "batch_stats": {"backbone": backbone["batch_stats"]}}


def index_for_config(config: ml_collections.ConfigDict) -> DatasetIndex:
    """The names of the config's dataset (as its loader gives them), without reading data."""
    name = config.data.name
    if name == "synthetic":
        spec = LIKES[config.data.like]
        return DatasetIndex(
            name=f"synthetic-{config.data.like}",
            class_names=list(spec.class_names),
            splits={},
            multilabel=spec.multilabel,
            background_class=spec.background_class,
            concept_names=list(spec.concept_names),
        )
    if name == "isic2017":
        return DatasetIndex(
            name=name, class_names=list(isic.CLASS_NAMES), splits={}, multilabel=False
        )
    if name == "covidx":
        classes = list(config.data.get("covidx_classes", covidx.DEFAULTS["covidx_classes"]))
        bg = next((classes.index(c) for c in covidx.BACKGROUND_NAMES if c in classes), None)
        return DatasetIndex(
            name=name, class_names=classes, splits={}, multilabel=False, background_class=bg
        )
    raise ConfigError(
        f"X-MIR conversion: unsupported data.name {name!r} (isic2017, covidx or synthetic)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="original X-MIR *_ckpt.pth (state_dict)")
    parser.add_argument(
        "--config",
        required=True,
        help="config file[:arg], e.g. configs/xmir_isic.py (256-d) or configs/xmir_covidx.py "
        "(1024-d; :embedding_dim=256 for its +256-d models)",
    )
    parser.add_argument("--out", required=True, help="output jaxproto workdir")


def run(args: argparse.Namespace, method_cls: type[Method]) -> int:
    """Writes the converted weights as the finished checkpoint of a new workdir; ``method_cls``
    is ``XmirMethod`` (passed in by ``XmirMethod.converters``)."""
    config = load_config_file(args.config)
    index = index_for_config(config)
    method = method_cls(config, index)
    optimizers = method.optimizers(steps_per_epoch=1)
    state = trainer.init_state(method, optimizers, int(config.train.seed))
    converted = convert_checkpoint(
        read_state_dict(args.input),
        config.model.backbone,
        int(config.model.embedding_dim),
        source=args.input,
    )
    for key in ("params", "batch_stats"):
        want = jax.tree.map(np.shape, state[key])
        got = jax.tree.map(np.shape, converted[key])
        if want != got:
            raise CheckpointMismatchError(f"{args.input}: converted {key} do not fit the model")
        state[key] = jax.tree.map(lambda x: np.asarray(x, np.float32), converted[key])
    state["opt"] = {name: tx.init(state["params"]) for name, tx in optimizers.items()}
    checkpoint.write_initial_checkpoint(args.out, config, state, workdir.dataset_meta(index))
    log.info("wrote %s from %s", args.out, args.input)
    return 0

"""Import an official CIPL checkpoint (cipl.md "Checkpoint conversion") into a jaxproto state.

The official file is ``torch.save(state_dict)`` of the unwrapped model: student keys
(``prototype_vectors``, ``features.features.*``, ``features.toplayer.*``, ``add_on_layers.{0,2}.*``,
``last_layer.weight``), the constant ``ones`` and the EMA copies (``*_ema``). Student tensors go
to ``params``/``batch_stats``, EMA tensors to ``extra.ema_params``/``extra.ema_batch_stats``.

CLI (``CiplMethod.converters()`` contributes it as ``cipl``)::

    python -m jaxproto.convert cipl --input 31nopush0.8275.pth \\
        --config configs/cipl_chestxray14.py --out runs/cipl_official
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from jaxproto.backbones import convert_state_dict, read_state_dict
from jaxproto.common import trees
from jaxproto.common.config import load_config_file
from jaxproto.core import checkpoint, trainer, workdir
from jaxproto.core.method import Method
from jaxproto.data.chestxray14 import class_names
from jaxproto.data.odir import CLASS_NAMES
from jaxproto.data.records import DatasetIndex
from jaxproto.data.synthetic import LIKES

log = logging.getLogger(__name__)

HELP = "official CIPL state_dict (student + EMA teacher) -> an evaluable jaxproto workdir"

_SHAPE_HINT = "check model.prototypes_per_class, proto_dim and the class count"


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0))  # OIHW -> HWIO


def _take(sd: dict, key: str, where: str) -> np.ndarray:
    if key not in sd:
        raise KeyError(f"{where}: missing key {key!r} in the CIPL state_dict")
    return np.asarray(sd.pop(key))


def _branch(sd: dict, suffix: str, arch: str) -> tuple[dict, dict]:
    """(params, batch_stats) of the student (suffix "") or the EMA teacher (suffix "_ema")."""
    where = "student" if not suffix else "EMA teacher"
    prefix = f"features{suffix}.features."
    backbone_sd = {
        k[len(f"features{suffix}.") :]: sd.pop(k) for k in [k for k in sd if k.startswith(prefix)]
    }
    if not backbone_sd:
        raise KeyError(f"{where}: no '{prefix}*' keys in the CIPL state_dict")
    bb = convert_state_dict(backbone_sd, arch, drop_head=True, source_name=f"CIPL {where} backbone")
    protos = _take(sd, f"prototype_vectors{suffix}", where)
    params = {
        "backbone": bb["params"],
        "toplayer": {
            "kernel": _conv(_take(sd, f"features{suffix}.toplayer.weight", where)),
            "bias": _take(sd, f"features{suffix}.toplayer.bias", where),
        },
        "add_on_0": {
            "kernel": _conv(_take(sd, f"add_on_layers{suffix}.0.weight", where)),
            "bias": _take(sd, f"add_on_layers{suffix}.0.bias", where),
        },
        "add_on_1": {
            "kernel": _conv(_take(sd, f"add_on_layers{suffix}.2.weight", where)),
            "bias": _take(sd, f"add_on_layers{suffix}.2.bias", where),
        },
        "prototype_vectors": protos.reshape(protos.shape[0], protos.shape[1]),
        "last_layer": {"kernel": _take(sd, f"last_layer{suffix}.weight", where).T},
    }
    return params, {"backbone": bb["batch_stats"]}


def convert_official(
    state_dict: Mapping[str, np.ndarray],
    config: ml_collections.ConfigDict,
    template: Mapping | None = None,
) -> dict:
    """Official state_dict -> {"params", "batch_stats", "extra"} for ``config``.

    Without ``*_ema`` keys the teacher is a copy of the student. ``template`` (e.g.
    ``jax.eval_shape(method.init, key)``) makes shapes and structure checked strictly.
    """
    sd = {k: np.asarray(v) for k, v in state_dict.items()}
    sd.pop("ones", None)
    arch = config.model.backbone
    params, batch_stats = _branch(sd, "", arch)
    if any(k.endswith("_ema") or "_ema." in k for k in sd):
        ema_params, ema_stats = _branch(sd, "_ema", arch)
    else:
        log.warning("no EMA keys in the checkpoint: the teacher starts as a copy of the student")
        ema_params, ema_stats = params, batch_stats
    if sd:
        raise ValueError(f"unexpected keys in the CIPL state_dict: {sorted(sd)[:10]}")
    state = {
        "params": params,
        "batch_stats": batch_stats,
        "extra": {"ema_params": ema_params, "ema_batch_stats": ema_stats},
    }
    if template is not None:
        for key in ("params", "batch_stats", "extra"):
            trees.check_like(
                key,
                state[key],
                template[key],
                "check model.prototypes_per_class, proto_dim and the class count",
            )
    return jax.tree.map(lambda x: np.asarray(x, np.float32), state)


def index_for_config(config: ml_collections.ConfigDict) -> DatasetIndex:
    """Class names and background class of the config's dataset, without reading any data."""
    name = config.data.name
    if name == "synthetic":
        spec = LIKES[config.data.like]
        names, bg = list(spec.class_names), spec.background_class
    elif name == "chestxray14":
        names = class_names()
        bg = names.index("No Finding")
    elif name == "odir":
        names, bg = list(CLASS_NAMES), len(CLASS_NAMES) - 1
    else:
        raise ValueError(
            f"CIPL conversion: unsupported data.name {name!r} (chestxray14, odir or synthetic)"
        )
    return DatasetIndex(name=name, class_names=names, splits={}, background_class=bg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="official CIPL .pth (state_dict)")
    parser.add_argument(
        "--config", required=True, help="config file[:arg], e.g. configs/cipl_chestxray14.py"
    )
    parser.add_argument("--out", required=True, help="output jaxproto workdir")


def run(args: argparse.Namespace, method_cls: type[Method]) -> int:
    """Writes the converted state as step-0 checkpoint of a workdir; ``method_cls`` is
    ``CiplMethod`` (passed in by ``CiplMethod.converters``)."""
    config = load_config_file(args.config)
    index = index_for_config(config)
    method = method_cls(config, index)
    optimizers = method.optimizers(steps_per_epoch=1)
    base = jax.eval_shape(lambda: trainer.init_state(method, optimizers, int(config.train.seed)))
    converted = convert_official(read_state_dict(args.input), config, template=base)
    state = trainer.init_state(method, optimizers, int(config.train.seed))
    state.update(converted)
    state["opt"] = {name: tx.init(state["params"]) for name, tx in optimizers.items()}
    checkpoint.write_initial_checkpoint(args.out, config, state, workdir.dataset_meta(index))
    log.info("wrote %s from %s", args.out, args.input)
    return 0

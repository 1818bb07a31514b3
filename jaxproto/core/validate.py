"""Whole-config checks before any work starts: one ConfigError naming every wrong key and what
is valid, so a mistake never surfaces minutes into a run (or leaves an empty workdir behind)."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from jaxproto.backbones import BACKBONES
from jaxproto.common.errors import ConfigError
from jaxproto.core import parallel
from jaxproto.data import registry as data_registry
from jaxproto.data.records import DatasetIndex

# Folder names of the published datasets, for the "how to set data.root" hint.
DATASET_FOLDERS = {
    "chestxray14": "ChestX-ray14",
    "covidx": "COVIDx",
    "ddi": "DDI",
    "ham10000": "HAM10000",
    "isic2017": "ISIC-2017",
    "odir": "ODIR-5K",
    "tbx11k": "TBX11K",
    "vindr": "VinDr-CXR",
}
ENUMS = {
    "train.best_mode": ("max", "min"),
    "data.on_bad_sample": ("error", "skip"),
}
POSITIVE_INTS = (
    "train.batch_size",
    "train.eval_batch_size",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
)


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            return None
        node = node[key]
    return node


def config_problems(config: ml_collections.ConfigDict, method_names: Sequence[str]) -> list[str]:
    """Every problem of ``config`` that can be seen without the data, one phrase each."""
    problems = []
    if config.get("method") not in method_names:
        problems.append(
            f"method={config.get('method')!r} is unknown; valid: {', '.join(method_names)}"
        )
    backbone = _get(config, "model.backbone")
    if backbone is not None and backbone not in BACKBONES:
        problems.append(
            f"model.backbone={backbone!r} is unknown; valid: {', '.join(sorted(BACKBONES))}"
        )
    for key in POSITIVE_INTS:
        value = _get(config, key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            problems.append(f"{key}={value!r} must be a positive integer")
    for key, valid in ENUMS.items():
        value = _get(config, key)
        if value is not None and value not in valid:
            problems.append(f"{key}={value!r} must be one of {', '.join(valid)}")
    batch = _get(config, "train.batch_size")
    if isinstance(batch, int) and batch > 0:
        devices = parallel.make_mesh(config.mesh).size
        if batch % devices:
            problems.append(
                f"train.batch_size={batch} must be a multiple of the {devices} devices "
                f"(e.g. --config.train.batch_size={max(devices, batch // devices * devices)})"
            )
    data = config.get("data", ml_collections.ConfigDict())
    name = data.get("name", "")
    generated = name in data_registry.GENERATED
    if name and not generated and not data.get("prepared") and not data.get("root"):
        folder = DATASET_FOLDERS.get(name, name)
        problems.append(
            f"data.root is not set: give the {name} dataset folder, e.g. "
            f"--config.data.root=/path/to/{folder} (or --config.data.prepared=DIR)"
        )
    return problems


def validate_config(config: ml_collections.ConfigDict, method_names: Sequence[str]) -> None:
    """Raises one ConfigError listing every problem ``config_problems`` finds."""
    problems = config_problems(config, method_names)
    if problems:
        raise ConfigError("config: " + "; ".join(problems))


def validate_with_index(config: ml_collections.ConfigDict, index: DatasetIndex) -> None:
    """The checks that need the dataset: the evaluation split exists and is not empty."""
    split = config.train.eval_split
    if not index.splits.get(split):
        have = ", ".join(s for s, r in sorted(index.splits.items()) if r) or "none"
        hint = ""
        if split == "val":
            protocol = config.get("eval", {}).get("protocol", "")
            hint = (
                f" (eval.protocol={protocol!r} selects on a validation split: set "
                "data.val_fraction (real data) or data.num_val (synthetic) to -1 or a size, or "
                "select on test with --config.eval.protocol=paper)"
            )
        raise ConfigError(
            f"train.eval_split={split!r}: dataset {index.name!r} has no such split with images; "
            f"available: {have}{hint}"
        )

"""Evaluation protocols: which split model selection and operating thresholds use.

``eval.protocol`` names one of the method's protocols (``Method.PROTOCOLS``: protocol -> the
split that ``train.best_metric`` and the F1 thresholds are chosen on). The default,
``validation``, selects on a validation split -- the dataset's official list, else a
patient-wise ``data.val_fraction`` (auto: ``data.loading.AUTO_VAL_FRACTION``) carved from the
training split, else, for synthetic data, ``data.num_val`` extra generated images (auto: as
many as the test split), so the training set is the same under every protocol -- and test
numbers come only from the selected checkpoint (``evaluate --checkpoint best``). ``paper``
selects on the test split, as the papers' code does. Med-MICN declares its own pair
(``faithful`` = paper selection, ``fair`` = validation selection).

``resolve`` turns a built config into a resolved one (idempotent; ``config.json`` holds the
result): ``train.eval_split`` "" follows the protocol, and under a protocol that selects on test
the automatic validation sizes become 0 (no split is carved or generated). A saved config
without ``eval.protocol`` (a run from before protocols) is reported as ``paper``: it selected on
its ``train.eval_split``.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from jaxproto.common.errors import ConfigError

DEFAULT_PROTOCOLS: Mapping[str, str] = {"validation": "val", "paper": "test"}
LEGACY = "paper"  # what a config without eval.protocol did: select on train.eval_split


def protocol_name(config: ml_collections.ConfigDict) -> str:
    """``eval.protocol``, or ``paper`` for a config saved before protocols existed."""
    return str(config.get("eval", {}).get("protocol", "") or LEGACY)


def resolve(config: ml_collections.ConfigDict, protocols: Mapping[str, str]) -> None:
    """Resolves ``config`` in place for its protocol (see the module docstring); a protocol
    the method does not declare is a ConfigError listing the valid ones."""
    name = protocol_name(config)
    if name not in protocols:
        raise ConfigError(
            f"config: eval.protocol={name!r} is unknown for method {config.get('method')!r}; "
            f"valid: {', '.join(protocols)}"
        )
    split = protocols[name]
    with config.unlocked():
        if not config.train.get("eval_split", ""):
            config.train.eval_split = split
        data = config.data
        if split != "val":
            if float(data.get("val_fraction", 0.0)) < 0:
                data.val_fraction = 0.0
            if int(data.get("num_val", 0)) < 0:
                data.num_val = 0


def describe(config: ml_collections.ConfigDict, checkpoint: str = "") -> dict:
    """What an evaluation JSON and an evidence page say about how the model was selected."""
    train = config.train
    metric = str(train.get("best_metric", "") or "")
    return {
        "protocol": protocol_name(config),
        "selection_split": str(train.get("eval_split", "")),
        "best_metric": metric or None,
        "checkpoint": checkpoint,
    }


def note(config: ml_collections.ConfigDict, checkpoint: str = "") -> str:
    """One line for page headers: the protocol and where the checkpoint was chosen."""
    d = describe(config, checkpoint)
    how = (
        f"the best {d['best_metric']} on the {d['selection_split']} split"
        if d["best_metric"]
        else f"the last step (evaluated on the {d['selection_split']} split)"
    )
    where = f" ({checkpoint})" if checkpoint else ""
    return f"{d['protocol']} protocol, checkpoint selected by {how}{where}"

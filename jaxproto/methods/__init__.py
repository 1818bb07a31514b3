"""Method registry: ``config.method`` -> Method class, and the two ways to build one.

A new method is a folder ``methods/<m>/``, its configs, its tests and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import jax
import ml_collections

from jaxproto.common.errors import ConfigError
from jaxproto.core import protocol
from jaxproto.core.method import Method
from jaxproto.core.trainer import Trainer
from jaxproto.data import registry as data_registry
from jaxproto.data.records import BadSampleReport, DatasetIndex

_METHODS = {
    "baseline": "jaxproto.methods.baseline.method:BaselineMethod",
    "cfn": "jaxproto.methods.cfn.method:CfnMethod",
    "cipl": "jaxproto.methods.cipl.method:CiplMethod",
    "csr": "jaxproto.methods.csr.method:CsrMethod",
    "medmicn": "jaxproto.methods.medmicn.method:MedMicnMethod",
    "xmir": "jaxproto.methods.xmir.method:XmirMethod",
}


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name`` (its module is imported on first use)."""
    if name not in _METHODS:
        raise ConfigError(
            f"config.method={name!r} is unknown; available: {', '.join(method_names())}"
        )
    module_name, _, cls = _METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls)


def resolve_protocol(config: ml_collections.ConfigDict) -> None:
    """``core.protocol.resolve`` with the protocols the configured method declares."""
    protocol.resolve(config, get_method(config.method).PROTOCOLS)


def build_method(config: ml_collections.ConfigDict, index: DatasetIndex) -> Method:
    """The configured method on a dataset index (records, or names only for inference)."""
    return get_method(config.method)(config, index)


def build_trainer(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
) -> Trainer:
    """Resolves the config's evaluation protocol (in place, ``core.protocol``), loads the
    configured dataset, builds the method on it and hands both to a Trainer."""
    resolve_protocol(config)
    report = BadSampleReport(config.data.get("on_bad_sample", "error"))
    index = data_registry.load_index(config.data, report)
    return Trainer(config, workdir, build_method(config, index), report, devices)

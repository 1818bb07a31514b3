"""Method registry: config.method -> Method class (imported lazily)."""

from __future__ import annotations

import importlib

_METHODS = {
    "baseline": "jaxproto.methods.baseline.method:BaselineMethod",
    "cfn": "jaxproto.methods.cfn.method:CfnMethod",
    "cipl": "jaxproto.methods.cipl.method:CiplMethod",
    "csr": "jaxproto.methods.csr.method:CsrMethod",
    "xmir": "jaxproto.methods.xmir.method:XmirMethod",
}


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str):
    """The Method class registered under ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    module_name, _, cls = _METHODS[name].partition(":")
    return getattr(importlib.import_module(module_name), cls)

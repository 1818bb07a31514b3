"""CSR on VinDr-CXR (14 local-finding concepts; single-label target, specs/csr.md §7 [U]).
Variants (``jaxproto/methods/csr/config.py``): ``synthetic`` (procedural VinDr-like CXRs,
concepts = the 14 findings with boxes), ``clever_hans``, ``backbone=NAME``, ``image_size=N``,
``runlocal``."""

from jaxproto.methods.csr import config


def get_config(arg=None):
    return config.get_config("vindr", arg)

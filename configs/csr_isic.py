"""CSR on ISIC 2017 (3 classes; 4 dermoscopic concepts from the Part-2 JSONs, specs/csr.md §7).
Variants (``jaxproto/methods/csr/config.py``): ``synthetic`` (procedural skin images whose class
is decided by the 4 concepts, with boxes), ``clever_hans``, ``backbone=NAME``, ``image_size=N``,
``runlocal``."""

from jaxproto.methods.csr import config


def get_config(arg=None):
    return config.get_config("isic2017", arg)

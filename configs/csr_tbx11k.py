"""CSR on TBX11K (3 classes healthy / sick-non-TB / TB; concepts per specs/csr.md §7). Variants
(``jaxproto/methods/csr/config.py``): ``synthetic`` (procedural TBX11K-like images whose class
is a function of 5 lesion concepts with boxes), ``clever_hans`` (synthetic with a spurious
corner marker on every training image of one class), ``backbone=NAME``, ``image_size=N``,
``runlocal``."""

from jaxproto.methods.csr import config


def get_config(arg=None):
    return config.get_config("tbx11k", arg)

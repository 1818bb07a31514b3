"""CSR on ISIC 2017 (3 classes; 4 dermoscopic concepts from the Part-2 JSONs, specs/csr.md §7).

Variants (see ``csr_tbx11k.py``): ``synthetic`` (procedural skin images whose class is decided
by the 4 concepts, with boxes), ``clever_hans``, ``backbone=NAME``, ``image_size=N``, ``runlocal``.
"""

from configs.csr_tbx11k import build_config


def get_config(arg=None):
    return build_config("isic2017", "isic2017", arg)

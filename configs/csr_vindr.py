"""CSR on VinDr-CXR (14 local-finding concepts; single-label target, specs/csr.md §7 [U]).

Variants (see ``csr_tbx11k.py``): ``synthetic`` (procedural VinDr-like CXRs, concepts = the 14
findings with boxes), ``clever_hans``, ``backbone=NAME``, ``image_size=N``, ``runlocal``.
"""

from configs.csr_tbx11k import build_config


def get_config(arg=None):
    return build_config("vindr", "vindr", arg)

"""X-MIR retrieval embedder on COVIDx (normal / pneumonia / COVID-19).

Faithful defaults (specs/xmir.md §2): DenseNet-121 initialised from CheXNet (``init_from`` = the
CheXNet ``model.pth.tar`` or its converted .msgpack), 1024-d GAP embedding (the COVID README
example), P x K = 3 x 16, batch-all triplet loss with margin 0.2, Adam 1e-4, 20 PK epochs (31
steps each on COVIDx), seed 0. Variants as in configs/xmir_isic.py (``synthetic``,
``anomaly`` = COVID-19 left out, ``embedding_dim=256`` = "+256-d", ...).
"""

from configs.xmir_isic import build


def get_config(arg=None):
    return build(arg, dataset="covidx", anomaly_class="COVID-19", embedding_dim=0)

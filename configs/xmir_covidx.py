"""X-MIR retrieval embedder on COVIDx (normal / pneumonia / COVID-19): DenseNet-121 from CheXNet,
1024-d GAP embedding, P x K = 3 x 16, 20 PK epochs of 31 steps. Variants
(``jaxproto/methods/xmir/config.py``): ``synthetic`` (600 procedural training images),
``anomaly`` (COVID-19 left out), ``embedding_dim=256`` ("+256-d"), ``backbone=NAME``,
``image_size=N``, ``epochs=E``, ``runlocal``."""

from jaxproto.methods.xmir import config


def get_config(arg=None):
    return config.get_config("covidx", arg)

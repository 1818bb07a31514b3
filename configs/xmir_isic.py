"""X-MIR retrieval embedder on ISIC 2017 (nevus / seborrheic keratosis / melanoma): DenseNet-121
from ImageNet weights, 256-d embedding, P x K = 3 x 16, 20 PK epochs of 15 steps. Variants
(``jaxproto/methods/xmir/config.py``): ``synthetic`` (3000 procedural training images,
densenet_tiny at 64 px), ``anomaly`` (melanoma left out), ``embedding_dim=N``, ``backbone=NAME``,
``image_size=N``, ``epochs=E``, ``runlocal``."""

from jaxproto.methods.xmir import config


def get_config(arg=None):
    return config.get_config("isic2017", arg)

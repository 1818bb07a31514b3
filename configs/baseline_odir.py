"""Black-box baseline on ODIR-5K (per-eye multi-label, 8 classes, Normal = background).

Variants: ``synthetic`` (procedural fundus images, tiny ResNet, CPU minutes),
``backbone=NAME``, ``image_size=N``, ``runlocal`` (few steps, for smoke tests).
"""

from jaxproto.methods.baseline import config


def get_config(arg=None):
    return config.get_config("odir", arg)

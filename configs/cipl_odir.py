"""CIPL on ODIR-5K (cipl.md §5): per-eye samples, 640 px (20x20 feature grid), 8 classes with
Normal (7) as background, 50 prototypes per class. Variants
(``jaxproto/methods/cipl/config.py``): ``synthetic`` (every phase on procedural fundus-like
data), ``backbone=NAME``, ``image_size=N``, ``prototypes_per_class=N``."""

from jaxproto.methods.cipl import config


def get_config(arg=None):
    return config.get_config("odir", arg)

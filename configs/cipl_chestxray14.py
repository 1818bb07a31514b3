"""CIPL on NIH ChestX-ray14 (cipl.md): 512 px, 15 classes (No Finding = background), official
split, DenseNet-121 tapped before norm5, 50 prototypes per class. Variants
(``jaxproto/methods/cipl/config.py``): ``synthetic`` (the whole schedule — warm-up, main, push,
last layer, main, push, last layer — on procedural ChestX-ray14-like data on a CPU),
``backbone=NAME``, ``image_size=N``, ``prototypes_per_class=N``."""

from jaxproto.methods.cipl import config


def get_config(arg=None):
    return config.get_config("chestxray14", arg)

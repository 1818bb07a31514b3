"""Med-MICN on the Kermany chest X-ray pneumonia set (train/test NORMAL|PNEUMONIA folders) with
concept labels from kermany_concepts.csv (none are published: write it with the pseudo-
labeller).

Variants (comma list after ``:``): ``synthetic`` (procedural images whose concepts are planted
primitives and whose class is a known rule of them; tiny ResNet; fair protocol),
``backbone=NAME``, ``protocol=faithful|fair``, ``image_size=N``, ``runlocal``. See
jaxproto/methods/medmicn/config.py.
"""

from jaxproto.methods.medmicn import config


def get_config(arg=None):
    return config.get_config("chestxray", arg)

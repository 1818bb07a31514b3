"""Med-MICN on the 3,230 SkinCon-annotated Fitzpatrick17k images, malignant vs non-malignant,
8:2 seeded split.

Variants (comma list after ``:``): ``synthetic`` (procedural images whose concepts are planted
primitives and whose class is a known rule of them; tiny ResNet; fair protocol),
``backbone=NAME``, ``protocol=faithful|fair``, ``image_size=N``, ``runlocal``. See
jaxproto/methods/medmicn/config.py.
"""

from jaxproto.methods.medmicn import config


def get_config(arg=None):
    return config.get_config("fitzpatrick", arg)

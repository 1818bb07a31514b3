"""Med-MICN on DDI (656 dermatology images, benign vs malignant) with the 13 SkinCon concepts
joined from ddi_metadata_concept.csv or SkinCon's DDI table.

Variants (comma list after ``:``): ``synthetic`` (procedural images whose concepts are planted
primitives and whose class is a known rule of them; tiny ResNet; fair protocol),
``backbone=NAME``, ``protocol=faithful|fair``, ``image_size=N``, ``runlocal``. See
jaxproto/methods/medmicn/config.py.
"""

from jaxproto.methods.medmicn import config


def get_config(arg=None):
    return config.get_config("ddi", arg)

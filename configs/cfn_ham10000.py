"""CFN (Concepts from Neurons) on ham10000: opaque DenseNet-121 -> SAE -> named CAVs -> CBM.

Variants: ``synthetic`` (procedural primitives with generated reports, CPU minutes),
``backbone=NAME`` (e.g. ``vit_b_16``), ``image_size=N``, ``runlocal`` (tiny smoke-test
shapes).
"""

from jaxproto.methods.cfn import config


def get_config(arg=None):
    return config.get_config("ham10000", arg)

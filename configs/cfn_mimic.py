"""CFN (Concepts from Neurons) on mimic: opaque DenseNet-121 -> SAE -> named CAVs -> CBM.

Variants: ``synthetic`` (procedural primitives with generated reports, CPU minutes),
``backbone=NAME``, ``image_size=N``, ``runlocal`` (tiny smoke-test shapes).
"""

from jaxproto.methods.cfn import config


def get_config(arg=None):
    return config.get_config("mimic", arg)

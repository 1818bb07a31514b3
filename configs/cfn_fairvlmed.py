"""CFN (Concepts from Neurons) on Harvard-FairVLMed (SLO fundus npz files with clinical notes):
opaque DenseNet-121 -> SAE -> named CAVs -> CBM.

Variants: ``synthetic`` (procedural primitives with generated reports, CPU minutes),
``backbone=NAME`` (e.g. ``vit_b_16``), ``image_size=N``, ``runlocal`` (tiny smoke-test
shapes), ``data_format=class2images`` (CFN's split pickles instead of the published files).
"""

from jaxproto.methods.cfn import config


def get_config(arg=None):
    return config.get_config("fairvlmed", arg)

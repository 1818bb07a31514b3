"""CIPL on NIH ChestX-ray14 (cipl.md): 512 px, 15 classes (No Finding = background), official
split, DenseNet-121 tapped before norm5, 50 prototypes per class.

``--config configs/cipl_chestxray14.py:synthetic`` trains the whole schedule (warm-up, main,
push, last layer, main, push, last layer) on procedural ChestX-ray14-like data on a CPU.
"""

from __future__ import annotations

import ml_collections

from jaxproto.common import config as common
from jaxproto.methods.cipl.defaults import cipl_config

# cipl.md §3.3: hard-coded sampler weights (Pneumonia 100, Hernia 150; No Finding base weight,
# multiplied by data.background_weight_single / _pairs).
CLASS_WEIGHTS = [
    12.617,
    61.201,
    12.065,
    7.580,
    25.897,
    22.190,
    100.0,
    39.617,
    36.630,
    75.813,
    73.415,
    83.509,
    46.597,
    150.0,
    2.0687,
]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, synthetic=False, backbone="", image_size=0, prototypes_per_class=0)
    if arg.synthetic:
        c = cipl_config(arg, "chestxray14", common.train_block())
    else:
        c = cipl_config(arg, "", common.train_block())
        c.data.name = "chestxray14"
        c.data.root = ""
        c.data.class_weights = CLASS_WEIGHTS
    c.mesh = common.mesh_block()
    c.distributed = common.distributed_block()
    return c

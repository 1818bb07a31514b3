"""CIPL on ODIR-5K (cipl.md §5): per-eye samples, 640 px (20x20 feature grid), 8 classes with
Normal (7) as background, 50 prototypes per class.

``--config configs/cipl_odir.py:synthetic`` runs every phase on procedural fundus-like data.
"""

from __future__ import annotations

import ml_collections

from jaxproto.common import config as common
from jaxproto.methods.cipl.defaults import cipl_config

# cipl.md §5: sampler weights (Normal base weight, multiplied by the background factors).
CLASS_WEIGHTS = [4.151, 22.933, 23.885, 26.7, 38.736, 27.896, 6.23, 2.4155]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, synthetic=False, backbone="", image_size=0, prototypes_per_class=0)
    if arg.synthetic:
        c = cipl_config(arg, "odir", common.train_block())
    else:
        if not arg.image_size:
            arg.image_size = 640
        c = cipl_config(arg, "", common.train_block())
        c.data.name = "odir"
        c.data.root = ""
        c.data.class_weights = CLASS_WEIGHTS
        # cipl.md §5: RandomResizedCrop 672 then 640, affine ±30°/0.3/0.8-1.2/±25 shear.
        c.data.augment.pair_pad = 32
        c.data.augment.pair_degrees = 30.0
        c.data.augment.pair_scale = [0.8, 1.2]
        c.data.augment.pair_shear = 25.0
    c.mesh = common.mesh_block()
    c.distributed = common.distributed_block()
    return c

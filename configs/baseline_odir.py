"""Black-box baseline on ODIR-5K (per-eye multi-label, 8 classes, Normal = background).

Variants: ``synthetic`` (procedural fundus images, tiny ResNet, CPU minutes),
``backbone=NAME``, ``image_size=N``, ``runlocal`` (few steps, for smoke tests).
"""

import ml_collections

from jaxproto.common import config as common


def get_config(arg=None):
    arg = common.parse_arg(arg, synthetic=False, runlocal=False, backbone="", image_size=0)
    c = ml_collections.ConfigDict()
    c.method = "baseline"
    c.model = ml_collections.ConfigDict()
    c.model.backbone = arg.backbone or ("resnet_tiny" if arg.synthetic else "resnet50")
    c.model.tap = "layer4"
    c.model.init_from = ""
    c.model.image_size = arg.image_size or (64 if arg.synthetic else 640)

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic" if arg.synthetic else "odir"
    c.data.root = ""
    c.data.image_size = c.model.get_ref("image_size")
    c.data.on_bad_sample = "error"
    c.data.val_fraction = 0.0
    c.data.seed = 0
    c.data.like = "odir"
    c.data.num_train = 1200
    c.data.num_test = 300
    c.data.num_val = 0
    c.data.clever_hans = False
    c.data.prepared = ""

    c.train = common.train_block(
        batch_size=32,
        eval_batch_size=64,
        epochs=8.0,
        best_metric="mean_auc",
        checkpoint_every_steps=100,
    )
    c.optim = ml_collections.ConfigDict(
        {"optimizer": "adamw", "lr": 3e-3 if arg.synthetic else 1e-4, "weight_decay": 1e-4}
    )
    c.mesh = common.mesh_block()
    c.distributed = common.distributed_block()
    if arg.runlocal:
        c.data.num_train, c.data.num_test = 64, 32
        c.train.batch_size, c.train.epochs = 8, 1.0
    return c

"""Baseline defaults: backbone -> global average pooling -> linear head, AdamW + cosine decay.

``get_config(dataset, arg)`` variants: ``synthetic`` (procedural fundus-like images, tiny ResNet,
CPU minutes), ``backbone=NAME``, ``image_size=N``, ``runlocal`` (few steps, for smoke tests).
"""

from __future__ import annotations

import ml_collections

from jaxproto.common import config as config_lib
from jaxproto.data.loading import AUTO
from jaxproto.data.registry import default_data_config

# Full-size input per dataset (the papers' resolutions).
IMAGE_SIZE = {"odir": 640}


def get_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The baseline config for ``dataset`` (a registry name), with the ``arg`` variants."""
    arg = config_lib.parse_arg(arg, synthetic=False, runlocal=False, backbone="", image_size=0)
    c = ml_collections.ConfigDict()
    c.method = "baseline"
    c.model = ml_collections.ConfigDict()
    c.model.backbone = arg.backbone or ("resnet_tiny" if arg.synthetic else "resnet50")
    c.model.tap = "layer4"
    c.model.init_from = ""
    c.model.compute_dtype = "float32"  # | bfloat16: backbone compute, float32 params
    c.model.conv1x1 = "xla"  # | matmul: 1x1 convs as matmuls (faster on XLA:CPU)
    c.model.stem_conv = "xla"  # | im2col_grad: the 7x7 stem's kernel gradient as a matmul
    c.model.conv_backend = "xla"  # | onednn: convolutions by oneDNN (pip install -e ".[onednn]")
    c.model.image_size = arg.image_size or (64 if arg.synthetic else IMAGE_SIZE.get(dataset, 224))

    c.data = default_data_config("synthetic" if arg.synthetic else dataset)
    c.data.image_size = c.model.get_ref("image_size")
    if arg.synthetic:
        c.data.update({"like": dataset, "num_train": 1200, "num_test": 300, "num_val": AUTO})
        c.data.clever_hans = False

    # batch 32, eval batch 64: train_block's defaults
    c.train = config_lib.train_block(epochs=8.0, best_metric="mean_auc", checkpoint_every_steps=100)
    c.optim = ml_collections.ConfigDict(
        {"optimizer": "adamw", "lr": 3e-3 if arg.synthetic else 1e-4, "weight_decay": 1e-4}
    )
    config_lib.add_run_blocks(c)  # eval (validation | paper, core.protocol), mesh, distributed
    if arg.runlocal:
        c.data.update({"num_train": 64, "num_test": 32})
        c.train.batch_size, c.train.epochs = 8, 1.0
    return c

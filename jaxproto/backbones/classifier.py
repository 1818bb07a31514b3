"""Backbone -> global average pooling -> linear head: the opaque classifier shared by the
black-box baseline and CFN's frozen source model. Returns the logits and the pooled embedding
(CFN's f(x), cfn.md §3: DenseNet features -> ReLU -> GAP; ResNet layer4 -> avgpool)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones.registry import build_backbone
from jaxproto.backbones.torch_import import init_with_pretrained


class Classifier(nn.Module):
    """``__call__(x, train) -> (logits (B, C), embedding (B, D))``."""

    backbone: str
    tap: str
    num_classes: int
    compute_dtype: str = "float32"  # the backbone's (model.compute_dtype)
    conv1x1: str = "xla"  # model.conv1x1
    stem_conv: str = "xla"  # model.stem_conv
    conv_backend: str = "xla"  # model.conv_backend

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        net = build_backbone(
            self.backbone,
            taps=(self.tap,),
            with_head=False,
            dtype=self.compute_dtype,
            conv1x1=self.conv1x1,
            stem_conv=self.stem_conv,
            conv_backend=self.conv_backend,
            name="backbone",
        )
        feats = net(x, train=train)[self.tap]
        pooled = feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats
        return nn.Dense(self.num_classes, name="head")(pooled), pooled


def init_state(net: Classifier, rng: jax.Array, image_size: int, init_from: str = "") -> dict:
    """A fresh ``{"params", "batch_stats", "extra": {}}`` of ``net`` for square RGB inputs of
    ``image_size``, with the user's weights file ``init_from`` (if any) merged into the
    backbone."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = net.init(rng, x, train=False)
    out = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return init_with_pretrained({**out, "extra": {}}, init_from, net.backbone)

"""Backbone -> global average pooling -> linear head: the opaque classifier shared by the
black-box baseline and CFN's frozen source model. Returns the logits and the pooled embedding
(CFN's f(x), cfn.md §3: DenseNet features -> ReLU -> GAP; ResNet layer4 -> avgpool)."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxproto.backbones.registry import build_backbone


class Classifier(nn.Module):
    """``__call__(x, train) -> (logits (B, C), embedding (B, D))``."""

    backbone: str
    tap: str
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        net = build_backbone(self.backbone, taps=(self.tap,), with_head=False, name="backbone")
        feats = net(x, train=train)[self.tap]
        pooled = feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats
        return nn.Dense(self.num_classes, name="head")(pooled), pooled

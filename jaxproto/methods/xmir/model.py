"""X-MIR embedder (specs/xmir.md §1): backbone final ReLU map -> ReLU -> GAP -> [Dense(D)] -> L2."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones import backbone_channels, build_backbone
from jaxproto.methods.xmir.losses import l2_normalize

TAP = "final_relu"


def torch_linear_init(fan_in: int):
    """PyTorch nn.Linear default: weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class XmirNet(nn.Module):
    """Unit-norm retrieval embedding. ``embedding_dim`` 0 keeps the backbone's GAP features
    (1024-d for DenseNet-121); > 0 adds the paper's linear layer (e.g. 256)."""

    arch: str = "densenet121"
    embedding_dim: int = 0
    bn_running_var: str = "unbiased"

    def setup(self):
        self.backbone = build_backbone(
            self.arch, taps=(TAP,), with_head=False, bn_running_var=self.bn_running_var
        )
        if self.embedding_dim > 0:
            fan_in = backbone_channels(self.arch, TAP)
            init = torch_linear_init(fan_in)
            self.fc = nn.Dense(self.embedding_dim, kernel_init=init, bias_init=init)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """A = ReLU(norm5(...)), (B, h, w, C): the explanation layer (1024x7x7 at 224)."""
        return self.backbone(x, train=train)[TAP]

    def head(self, feats: jax.Array) -> jax.Array:
        """Unnormalised embedding e = [W] GAP(ReLU(A)) [+ b]."""
        e = jax.nn.relu(feats).mean(axis=(1, 2))
        return self.fc(e) if self.embedding_dim > 0 else e

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Unit embeddings (B, D), e / max(||e||, 1e-12)."""
        return l2_normalize(self.head(self.features(x, train=train)))

"""X-MIR embedder (specs/xmir.md §1): backbone explanation layer A -> GAP -> [Dense(D)] -> L2.

A is the backbone's last ReLU output: DenseNet's ``final_relu`` (ReLU(norm5), 1024x7x7 at 224,
the original's ``features.relu``) or ResNet's ``layer4`` (the last bottleneck's ReLU, 2048x7x7;
the original ``ResNet50`` wrapper).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones import backbone_channels, build_backbone, get_spec
from jaxproto.kernels.prototypes import l2_normalize


def torch_linear_init(fan_in: int):
    """PyTorch nn.Linear default: weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def explanation_tap(arch: str) -> str:
    """The tap of ``arch`` that X-MIR pools and explains: the family's last ReLU map."""
    family = get_spec(arch).family
    if family not in ("densenet", "resnet"):
        raise ValueError(f"X-MIR embeds with a DenseNet or ResNet backbone, got {arch!r}")
    return get_spec(arch).default_taps[0]


class XmirNet(nn.Module):
    """Unit-norm retrieval embedding. ``embedding_dim`` 0 keeps the backbone's GAP features
    (1024-d for DenseNet-121, 2048-d for ResNet-50); > 0 adds the paper's linear layer."""

    arch: str = "densenet121"
    embedding_dim: int = 0
    bn_running_var: str = "unbiased"
    compute_dtype: str = "float32"
    conv1x1: str = "xla"
    stem_conv: str = "xla"
    conv_backend: str = "xla"

    def setup(self):
        self.tap = explanation_tap(self.arch)
        self.backbone = build_backbone(
            self.arch,
            taps=(self.tap,),
            with_head=False,
            bn_running_var=self.bn_running_var,
            dtype=self.compute_dtype,
            conv1x1=self.conv1x1,
            stem_conv=self.stem_conv,
            conv_backend=self.conv_backend,
        )
        if self.embedding_dim > 0:
            fan_in = backbone_channels(self.arch, self.tap)
            init = torch_linear_init(fan_in)
            self.fc = nn.Dense(self.embedding_dim, kernel_init=init, bias_init=init)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """A (B, h, w, C), already >= 0: the explanation layer."""
        return self.backbone(x, train=train)[self.tap]

    def head(self, feats: jax.Array) -> jax.Array:
        """Unnormalised embedding e = [W] GAP(A) [+ b]. No ReLU here: A is the final ReLU's
        output, and SimAtt differentiates with respect to it (§4.3)."""
        e = feats.mean(axis=(1, 2))
        return self.fc(e) if self.embedding_dim > 0 else e

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Unit embeddings (B, D), e / max(||e||, 1e-12)."""
        return l2_normalize(self.head(self.features(x, train=train)))

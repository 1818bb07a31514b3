"""ConvNeXt (timm / torchvision layout) with named feature taps.

Module names follow timm with ``.`` -> ``_``: ``stem_0`` (conv 4x4/4, VALID), ``stem_1`` (LN),
``stages_{s}_downsample_{0,1}`` (LN, conv 2x2/2; s >= 1), ``stages_{s}_blocks_{j}/{conv_dw, norm,
mlp_fc1, mlp_fc2, gamma}``, ``head_norm``, ``head_fc``. LayerNorm eps 1e-6, exact GELU, layer
scale initialised to 1e-6, stochastic depth linearly increasing to ``drop_path_rate`` (rng
stream ``drop_path``) (csr.md Pitfall 7).

Taps: ``stem``, ``stage1``..``stage4`` (outputs of timm's ``stages.0``..``stages.3``; ``stage4`` is
``forward_features``, un-normalised), ``pooled`` (``head_norm`` of the global average: timm's
pre-logits), ``logits`` (``head_fc``, needs ``with_head``). ``head_norm`` always exists (as in timm
with ``num_classes=0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.backbones import layers

TAPS = ("stem", "stage1", "stage2", "stage3", "stage4", "pooled", "logits")

CONFIGS: dict[str, dict] = {
    "convnext_tiny": {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768)},
    "convnext_tiny_test": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
}

_LN_EPS = 1e-6
# timm's trunc_normal_(std=.02) truncates at +-2 (absolute), i.e. ~100 std: a plain normal.
_INIT = nn.initializers.normal(0.02)


def tap_info(
    depths: Sequence[int], dims: Sequence[int], num_classes: int = 1000
) -> dict[str, tuple[int, int]]:
    """(channels, stride) of every tap (stride 0 for vectors)."""
    info = {"stem": (dims[0], 4)}
    for i, d in enumerate(dims):
        info[f"stage{i + 1}"] = (d, 4 * 2**i)
    info["pooled"] = (dims[-1], 0)
    info["logits"] = (num_classes, 0)
    return info


class ConvNeXtBlock(layers.Configured):
    """x + drop_path(gamma * fc2(GELU(fc1(LN(dwconv7x7(x))))))."""

    dim: int
    drop_path: float
    layer_scale_init: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.Conv(
            self.dim,
            (7, 7),
            padding=((3, 3), (3, 3)),
            feature_group_count=self.dim,
            kernel_init=_INIT,
            dtype=self.dtype,
            name="conv_dw",
        )(x)
        y = layers.layer_norm(_LN_EPS, self.dtype, "norm")(y)
        y = nn.Dense(4 * self.dim, kernel_init=_INIT, dtype=self.dtype, name="mlp_fc1")(y)
        y = jax.nn.gelu(y, approximate=False)
        y = nn.Dense(self.dim, kernel_init=_INIT, dtype=self.dtype, name="mlp_fc2")(y)
        gamma = self.param(
            "gamma", nn.initializers.constant(self.layer_scale_init), (self.dim,), jnp.float32
        )
        y = y * gamma.astype(y.dtype)
        return x + layers.DropPath(self.drop_path)(y, train)


class ConvNeXt(layers.Backbone):
    """ConvNeXt returning a dict of the requested taps (``bn_running_var`` is accepted for a
    uniform factory signature; there is no BatchNorm here)."""

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    drop_path_rate: float = 0.0
    layer_scale_init: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        layers.check_taps("ConvNeXt", self.taps, TAPS, self.with_head)
        values = {}
        x = nn.Conv(
            self.dims[0],
            (4, 4),
            strides=(4, 4),
            padding="VALID",
            kernel_init=_INIT,
            dtype=self.dtype,
            name="stem_0",
        )(x.astype(self.dtype))
        x = layers.layer_norm(_LN_EPS, self.dtype, "stem_1")(x)
        values["stem"] = x
        rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
        k = 0
        for s, (depth, dim) in enumerate(zip(self.depths, self.dims, strict=True)):
            if s > 0:
                x = layers.layer_norm(_LN_EPS, self.dtype, f"stages_{s}_downsample_0")(x)
                x = nn.Conv(
                    dim,
                    (2, 2),
                    strides=(2, 2),
                    padding="VALID",
                    kernel_init=_INIT,
                    dtype=self.dtype,
                    name=f"stages_{s}_downsample_1",
                )(x)
            for j in range(depth):
                block = ConvNeXtBlock(
                    dim,
                    rates[k],
                    self.layer_scale_init,
                    dtype=self.dtype,
                    name=f"stages_{s}_blocks_{j}",
                )
                x = block(x, train)
                k += 1
            values[f"stage{s + 1}"] = x
        pooled = layers.global_avg_pool(x)
        values["pooled"] = layers.layer_norm(_LN_EPS, self.dtype, "head_norm")(pooled)
        if self.with_head:
            values["logits"] = nn.Dense(
                self.num_classes, kernel_init=_INIT, dtype=self.dtype, name="head_fc"
            )(values["pooled"])
        return layers.select_taps(values, self.taps)

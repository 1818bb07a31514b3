"""DenseNet-BC (torchvision layout) with named feature taps.

The parameter tree mirrors torchvision: ``features/conv0``, ``features/norm0``,
``features/denseblock{b}/denselayer{l}/{norm1,conv1,norm2,conv2}``,
``features/transition{t}/{norm,conv}``, ``features/norm5``, ``classifier``.

Taps: ``block4_prenorm`` (raw output of the last dense block, before ``norm5``; CIPL),
``final_relu`` (ReLU(norm5(...)); X-MIR's explanation layer), ``pooled`` (global average of
``final_relu``, torchvision's classifier input), ``logits`` (``classifier``, needs ``with_head``).
``norm5`` always runs, so its running statistics update in train mode even when only
``block4_prenorm`` is used (cipl.md §1.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones import layers

TAPS = ("block4_prenorm", "final_relu", "pooled", "logits")

CONFIGS: dict[str, dict] = {
    "densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64},
    "densenet169": {"growth_rate": 32, "block_config": (6, 12, 32, 32), "num_init_features": 64},
    "densenet_tiny": {"growth_rate": 8, "block_config": (2, 2, 2, 2), "num_init_features": 16},
    # Three dense blocks: output stride 16 (8x8 maps at 128 px) for CPU demos of
    # prototype localisation.
    "densenet_tiny_s16": {"growth_rate": 12, "block_config": (2, 3, 4), "num_init_features": 16},
}


def tap_info(
    growth_rate: int,
    block_config: Sequence[int],
    num_init_features: int,
    num_classes: int = 1000,
) -> dict[str, tuple[int, int]]:
    """(channels, stride) of every tap (stride 0 for vectors)."""
    ch = num_init_features
    for i, n in enumerate(block_config):
        ch += n * growth_rate
        if i != len(block_config) - 1:
            ch //= 2
    stride = 4 * 2 ** (len(block_config) - 1)
    return {
        "block4_prenorm": (ch, stride),
        "final_relu": (ch, stride),
        "pooled": (ch, 0),
        "logits": (num_classes, 0),
    }


def _conv(module: layers.Configured, features: int, k: int, name: str, stride: int = 1):
    return layers.conv_no_bias(
        features,
        k,
        stride,
        layers.kaiming_normal_fan_in,
        module.dtype,
        name,
        module.conv1x1,
        conv_backend=module.conv_backend,
    )


class DenseLayer(layers.Configured):
    """BN-ReLU-Conv1x1(bn_size*growth)-BN-ReLU-Conv3x3(growth); returns only the new features."""

    growth_rate: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = nn.relu(self.norm("norm1")(x, train))
        y = _conv(self, self.bn_size * self.growth_rate, 1, "conv1")(y)
        y = nn.relu(self.norm("norm2")(y, train))
        return _conv(self, self.growth_rate, 3, "conv2")(y)


class DenseBlock(layers.Configured):
    """``num_layers`` dense layers; each sees the concatenation [input, new_1, ..., new_{l-1}]."""

    num_layers: int
    growth_rate: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_layers):
            y = DenseLayer(
                self.growth_rate,
                self.bn_size,
                **self.shared(),
                name=f"denselayer{i + 1}",
            )(x, train)
            x = jnp.concatenate([x, y], axis=-1)
        return x


class Transition(layers.Configured):
    """BN-ReLU-Conv1x1(out)-AvgPool 2x2/2."""

    out_features: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.norm("norm")(x, train)
        x = _conv(self, self.out_features, 1, "conv")(nn.relu(x))
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNetFeatures(layers.Configured):
    """torchvision's ``features`` Sequential; returns (last dense block output, norm5 output)."""

    growth_rate: int
    block_config: Sequence[int]
    num_init_features: int
    bn_size: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        kw = self.shared()
        x = layers.conv_no_bias(
            self.num_init_features,
            7,
            2,
            layers.kaiming_normal_fan_in,
            self.dtype,
            "conv0",
            stem_conv=self.stem_conv,
            conv_backend=self.conv_backend,
        )(x)
        x = layers.max_pool_3x3_s2(nn.relu(self.norm("norm0")(x, train)))
        ch = self.num_init_features
        for i, n in enumerate(self.block_config):
            x = DenseBlock(n, self.growth_rate, self.bn_size, **kw, name=f"denseblock{i + 1}")(
                x, train
            )
            ch += n * self.growth_rate
            if i != len(self.block_config) - 1:
                ch //= 2
                x = Transition(ch, **kw, name=f"transition{i + 1}")(x, train)
        return x, self.norm("norm5")(x, train)


class DenseNet(layers.Backbone):
    """DenseNet returning a dict of the requested taps."""

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        layers.check_taps("DenseNet", self.taps, TAPS, self.with_head)
        prenorm, normed = DenseNetFeatures(
            self.growth_rate,
            self.block_config,
            self.num_init_features,
            self.bn_size,
            **self.shared(),
            name="features",
        )(x.astype(self.dtype), train)
        values = {"block4_prenorm": prenorm, "final_relu": nn.relu(normed)}
        values["pooled"] = layers.global_avg_pool(values["final_relu"])
        if self.with_head:
            # torchvision initialises the classifier bias to 0 (weight: PyTorch default).
            values["logits"] = nn.Dense(
                self.num_classes,
                kernel_init=layers.torch_default_kernel,
                dtype=self.dtype,
                name="classifier",
            )(values["pooled"])
        return layers.select_taps(values, self.taps)

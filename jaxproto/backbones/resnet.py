"""ResNet (torchvision v1.5: stride on the 3x3 conv of the bottleneck) with named feature taps.

Module names mirror torchvision (``conv1``, ``bn1``, ``layer1_0/conv1``,
``layer1_0/downsample_conv`` for ``layer1.0.downsample.0``, ``fc``) so the weight mapping in
``torch_import`` is readable.
Taps: ``stem`` (after the max-pool), ``layer1``..``layer4``, ``pooled`` (global average of
layer4), ``logits`` (``fc``, needs ``with_head``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxproto.backbones import layers

TAPS = ("stem", "layer1", "layer2", "layer3", "layer4", "pooled", "logits")

CONFIGS: dict[str, dict] = {
    "resnet18": {"block": "basic", "layers": (2, 2, 2, 2), "widths": (64, 128, 256, 512)},
    "resnet34": {"block": "basic", "layers": (3, 4, 6, 3), "widths": (64, 128, 256, 512)},
    "resnet50": {"block": "bottleneck", "layers": (3, 4, 6, 3), "widths": (64, 128, 256, 512)},
    "resnet_tiny": {"block": "basic", "layers": (1, 1, 1, 1), "widths": (8, 16, 32, 64)},
}

_EXPANSION = {"basic": 1, "bottleneck": 4}


def tap_info(
    block: str, layers: Sequence[int], widths: Sequence[int], num_classes: int = 1000
) -> dict[str, tuple[int, int]]:
    """(channels, stride) of every tap for a ResNet configuration (stride 0 for vectors)."""
    exp = _EXPANSION[block]
    info = {"stem": (widths[0], 4)}
    for i, w in enumerate(widths):
        info[f"layer{i + 1}"] = (w * exp, 4 * 2**i)
    info["pooled"] = (widths[-1] * exp, 0)
    info["logits"] = (num_classes, 0)
    return info


def _conv(module: layers.Configured, features: int, k: int, stride: int, name: str):
    return layers.conv_no_bias(
        features,
        k,
        stride,
        layers.kaiming_normal_fan_out,
        module.dtype,
        name,
        module.conv1x1,
        conv_backend=module.conv_backend,
    )


class ResidualBlock(layers.Configured):
    """BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3 with the stride, 1x1 x4)."""

    block: str
    planes: int
    stride: int
    downsample: bool

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = self.norm
        if self.block == "basic":
            out = _conv(self, self.planes, 3, self.stride, "conv1")(x)
            out = nn.relu(bn("bn1")(out, train))
            out = _conv(self, self.planes, 3, 1, "conv2")(out)
            out = bn("bn2")(out, train)
        else:
            out = _conv(self, self.planes, 1, 1, "conv1")(x)
            out = nn.relu(bn("bn1")(out, train))
            out = _conv(self, self.planes, 3, self.stride, "conv2")(out)
            out = nn.relu(bn("bn2")(out, train))
            out = _conv(self, self.planes * 4, 1, 1, "conv3")(out)
            out = bn("bn3")(out, train)
        identity = x
        if self.downsample:
            identity = _conv(
                self, self.planes * _EXPANSION[self.block], 1, self.stride, "downsample_conv"
            )(x)
            identity = bn("downsample_bn")(identity, train)
        return nn.relu(out + identity)


class ResNet(layers.Backbone):
    """ResNet returning a dict of the requested taps (NHWC maps, (N, C) vectors)."""

    block: str = "basic"
    layers: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        layers.check_taps("ResNet", self.taps, TAPS, self.with_head)
        if self.block not in _EXPANSION:
            raise ValueError(f"ResNet block must be one of {list(_EXPANSION)}, got {self.block!r}")
        values = {}
        x = layers.conv_no_bias(
            self.widths[0],
            7,
            2,
            layers.kaiming_normal_fan_out,
            self.dtype,
            "conv1",
            stem_conv=self.stem_conv,
            conv_backend=self.conv_backend,
        )(x.astype(self.dtype))
        x = layers.max_pool_3x3_s2(nn.relu(self.norm("bn1")(x, train)))
        values["stem"] = x
        in_ch = self.widths[0]
        exp = _EXPANSION[self.block]
        for i, (n, w) in enumerate(zip(self.layers, self.widths, strict=True)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                x = ResidualBlock(
                    block=self.block,
                    planes=w,
                    stride=stride,
                    downsample=(j == 0 and (stride != 1 or in_ch != w * exp)),
                    **self.shared(),
                    name=f"layer{i + 1}_{j}",
                )(x, train)
                in_ch = w * exp
            values[f"layer{i + 1}"] = x
        values["pooled"] = layers.global_avg_pool(x)
        if self.with_head:
            values["logits"] = nn.Dense(
                self.num_classes,
                kernel_init=layers.torch_default_kernel,
                bias_init=layers.torch_default_bias(in_ch),
                dtype=self.dtype,
                name="fc",
            )(values["pooled"])
        return layers.select_taps(values, self.taps)

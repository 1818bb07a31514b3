"""VGG (torchvision layout, with or without BatchNorm) with named feature taps.

Module names carry torchvision's Sequential indices: ``features_{i}`` for ``features.{i}`` (conv or
BN) and ``classifier_{0,3,6}`` for the three Linear layers.

Taps: ``features`` (output of the last max-pool, stride 32), ``pooled`` (its global average),
``penultimate`` (fc7 after ReLU/Dropout, ``hidden_features`` = 4096; needs ``with_head``),
``logits`` (needs ``with_head``). The head first applies ``AdaptiveAvgPool2d((7, 7))`` and
flattens in PyTorch's (C, H, W) order so the first Linear's weight maps by a plain transpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones import layers

TAPS = ("features", "pooled", "penultimate", "logits")

_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_CFG_E = (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
)

CONFIGS: dict[str, dict] = {
    "vgg16": {"cfg": _CFG_D, "batch_norm": False, "hidden_features": 4096},
    "vgg16_bn": {"cfg": _CFG_D, "batch_norm": True, "hidden_features": 4096},
    "vgg19": {"cfg": _CFG_E, "batch_norm": False, "hidden_features": 4096},
    "vgg19_bn": {"cfg": _CFG_E, "batch_norm": True, "hidden_features": 4096},
}


def tap_info(
    cfg: Sequence[int | str], batch_norm: bool, hidden_features: int, num_classes: int = 1000
) -> dict[str, tuple[int, int]]:
    """(channels, stride) of every tap (stride 0 for vectors)."""
    ch = [v for v in cfg if v != "M"][-1]
    stride = 2 ** sum(1 for v in cfg if v == "M")
    return {
        "features": (ch, stride),
        "pooled": (ch, 0),
        "penultimate": (hidden_features, 0),
        "logits": (num_classes, 0),
    }


class VGG(layers.Backbone):
    """VGG returning a dict of the requested taps; ``dropout_rate`` uses the ``dropout`` rng."""

    cfg: Sequence[int | str] = _CFG_E
    batch_norm: bool = False
    hidden_features: int = 4096
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        layers.check_taps("VGG", self.taps, TAPS, self.with_head)
        x = x.astype(self.dtype)
        idx = 0  # torchvision's index in the `features` Sequential
        for v in self.cfg:
            if v == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                idx += 1
                continue
            x = nn.Conv(
                int(v),
                (3, 3),
                padding=((1, 1), (1, 1)),
                kernel_init=layers.kaiming_normal_fan_out,
                dtype=self.dtype,
                name=f"features_{idx}",
            )(x)
            if self.batch_norm:
                x = self.norm(f"features_{idx + 1}")(x, train)
            x = nn.relu(x)
            idx += 3 if self.batch_norm else 2
        values = {"features": x, "pooled": layers.global_avg_pool(x)}
        if self.with_head:
            h = layers.adaptive_avg_pool(x, (7, 7))
            h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
            for i in (0, 3):
                h = nn.Dense(
                    self.hidden_features,
                    kernel_init=nn.initializers.normal(0.01),
                    dtype=self.dtype,
                    name=f"classifier_{i}",
                )(h)
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(h))
            values["penultimate"] = h
            values["logits"] = nn.Dense(
                self.num_classes,
                kernel_init=nn.initializers.normal(0.01),
                dtype=self.dtype,
                name="classifier_6",
            )(h)
        return layers.select_taps(values, self.taps)

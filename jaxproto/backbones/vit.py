"""Vision Transformer (torchvision ``VisionTransformer`` layout, ViT-B/16 = ``vit_b_16``) with
named feature taps (cfn.md §2, §3).

Module names follow torchvision with ``.`` -> ``_``: ``conv_proj`` (patchify conv p x p / p),
``class_token`` and ``pos_embedding`` parameters, ``encoder_layer_{i}/{ln_1, self_attention,
ln_2, mlp_0, mlp_3}`` (pre-norm blocks; attention is Flax ``MultiHeadDotProductAttention`` with
query/key/value kernels (D, heads, D / heads) and out kernel (heads, D / heads, D)), ``ln`` (the
encoder's final LayerNorm) and ``head`` (``heads.head``). LayerNorm eps 1e-6, exact GELU, no
dropout (torchvision's defaults are 0); initialisation as torchvision (patch conv
fan-in normal, class token zeros, position embeddings N(0, 0.02), zero head).

``image_size`` fixes the position-embedding grid (image_size / patch_size)^2 + 1 as torchvision
does; torchvision rejects other input sizes, here an input of another (patch-divisible) size
uses the patch embeddings resized bicubically (``jax.image.resize``), a deviation for small
synthetic inputs only.

Taps: ``tokens`` (patch tokens after ``ln``, NHWC grid, stride = patch size), ``cls`` (the class
token after ``ln``: CFN's embedding, cfn.md §3), ``logits`` (``head``, needs ``with_head``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones import layers

TAPS = ("tokens", "cls", "logits")

CONFIGS: dict[str, dict] = {
    "vit_b_16": {
        "image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12,
        "hidden_dim": 768, "mlp_dim": 3072,
    },
    "vit_tiny_test": {
        "image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2,
        "hidden_dim": 32, "mlp_dim": 64,
    },
}  # fmt: skip

_LN_EPS = 1e-6


def tap_info(
    image_size: int,
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    num_classes: int = 1000,
) -> dict[str, tuple[int, int]]:
    """(channels, stride) of every tap (stride 0 for vectors)."""
    return {"tokens": (hidden_dim, patch_size), "cls": (hidden_dim, 0), "logits": (num_classes, 0)}


class EncoderBlock(layers.Configured):
    """x + attn(ln_1(x)), then + mlp(ln_2(.)) (torchvision ``EncoderBlock``)."""

    num_heads: int
    hidden_dim: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.layer_norm(_LN_EPS, self.dtype, "ln_1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=self.hidden_dim,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="self_attention",
        )(y, y)
        x = x + y
        y = layers.layer_norm(_LN_EPS, self.dtype, "ln_2")(x)
        dense = {"kernel_init": nn.initializers.xavier_uniform(), "dtype": self.dtype}
        bias = nn.initializers.normal(1e-6)
        y = nn.Dense(self.mlp_dim, bias_init=bias, name="mlp_0", **dense)(y)
        y = jax.nn.gelu(y, approximate=False)
        y = nn.Dense(self.hidden_dim, bias_init=bias, name="mlp_3", **dense)(y)
        return x + y


class VisionTransformer(layers.Backbone):
    """ViT returning a dict of the requested taps (``bn_running_var`` is accepted for a
    uniform factory signature; there is no BatchNorm here)."""

    image_size: int = 224
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        layers.check_taps("VisionTransformer", self.taps, TAPS, self.with_head)
        p, d = self.patch_size, self.hidden_dim
        n, h, w, _ = x.shape
        if h % p or w % p:
            raise ValueError(f"ViT: input {h}x{w} is not a multiple of the patch size {p}")
        x = nn.Conv(
            d,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="conv_proj",
        )(x.astype(self.dtype))
        gh, gw = h // p, w // p
        x = x.reshape(n, gh * gw, d)
        token = self.param("class_token", nn.initializers.zeros, (1, 1, d), jnp.float32)
        grid = self.image_size // p
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, grid * grid + 1, d), jnp.float32
        )
        if (gh, gw) != (grid, grid):
            patches = pos[:, 1:].reshape(1, grid, grid, d)
            patches = jax.image.resize(patches, (1, gh, gw, d), "bicubic")
            pos = jnp.concatenate([pos[:, :1], patches.reshape(1, gh * gw, d)], axis=1)
        x = jnp.concatenate([jnp.broadcast_to(token, (n, 1, d)).astype(x.dtype), x], axis=1)
        x = x + pos.astype(x.dtype)
        for i in range(self.num_layers):
            block = EncoderBlock(
                self.num_heads, d, self.mlp_dim, dtype=self.dtype, name=f"encoder_layer_{i}"
            )
            x = block(x)
        x = layers.layer_norm(_LN_EPS, self.dtype, "ln")(x)
        values = {"cls": x[:, 0], "tokens": x[:, 1:].reshape(n, gh, gw, d)}
        if self.with_head:
            values["logits"] = nn.Dense(
                self.num_classes,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                name="head",
            )(values["cls"])
        return layers.select_taps(values, self.taps)

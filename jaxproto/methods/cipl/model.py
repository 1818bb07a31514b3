"""CIPL network: backbone tap -> biased 1x1 top layer -> sigmoid add-on -> prototype layer.

cipl.md §1: embeddings z in [0, 1]^D on the feature grid, squared-L2 distance maps to P
prototypes (``prototypes_per_class`` per class, background class included), min-pooled
distances turned into similarities exp(-d / scale), and a bias-free last layer initialised to
1 for a prototype's own class and 0 elsewhere.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxproto.backbones import backbone_channels, build_backbone, get_spec
from jaxproto.backbones.layers import (
    kaiming_normal_fan_in,
    kaiming_normal_fan_out,
    torch_default_bias,
)
from jaxproto.kernels.prototypes import exp_similarity, l2_distance_maps, min_pool

BACKBONE_TAP = "block4_prenorm"


def prototype_class_identity(num_classes: int, prototypes_per_class: int) -> np.ndarray:
    """(P, C) one-hot matrix: prototype j belongs to class j // prototypes_per_class."""
    num_p = num_classes * prototypes_per_class
    ident = np.zeros((num_p, num_classes), np.float32)
    ident[np.arange(num_p), np.arange(num_p) // prototypes_per_class] = 1.0
    return ident


def _own_class_init(prototypes_per_class: int):
    """Last-layer kernel (P, C): 1 for the prototype's own class, else 0 (incorrect strength 0)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        _, num_c = shape
        return jnp.asarray(prototype_class_identity(num_c, prototypes_per_class), dtype)

    return init


def _uniform01(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype)  # torch.rand init of prototype vectors


class CiplNet(nn.Module):
    """The CIPL prototype network around an injected backbone returning a dict of taps."""

    backbone: nn.Module
    backbone_channels: int
    num_classes: int
    prototypes_per_class: int
    proto_dim: int = 256
    similarity_scale: float = 256.0
    tap: str = BACKBONE_TAP
    pretrain_head: bool = False
    pretrain_tap: str = ""

    @property
    def num_prototypes(self) -> int:
        return self.num_classes * self.prototypes_per_class

    def setup(self):
        self.toplayer = nn.Conv(
            self.proto_dim,
            (1, 1),
            kernel_init=kaiming_normal_fan_in,
            bias_init=torch_default_bias(self.backbone_channels),
        )
        self.add_on_0 = nn.Conv(
            self.proto_dim,
            (1, 1),
            kernel_init=kaiming_normal_fan_out,
            bias_init=nn.initializers.zeros,
        )
        self.add_on_1 = nn.Conv(
            self.proto_dim,
            (1, 1),
            kernel_init=kaiming_normal_fan_out,
            bias_init=nn.initializers.zeros,
        )
        self.prototype_vectors = self.param(
            "prototype_vectors", _uniform01, (self.num_prototypes, self.proto_dim)
        )
        self.last_layer = nn.Dense(
            self.num_classes,
            use_bias=False,
            kernel_init=_own_class_init(self.prototypes_per_class),
        )
        if self.pretrain_head:
            self.pretrain_classifier = nn.Dense(self.num_classes)

    def pretrain_logits(self, x: jax.Array, train: bool) -> jax.Array:
        """Images -> (N, C) logits of a GAP linear head on the backbone's last feature map.

        Only for in-domain backbone pretraining (``train.pretrain_epochs``), the stand-in for
        the ImageNet initialisation when no pretrained file is given; unused by the prototype
        classifier."""
        taps = self.backbone(x, train=train)
        return self.pretrain_classifier(jnp.mean(nn.relu(taps[self.pretrain_tap]), axis=(1, 2)))

    def backbone_map(self, x: jax.Array, train: bool) -> jax.Array:
        """Images (N, H, W, 3) -> the backbone's feature map at ``tap`` (N, h, w, C)."""
        taps = self.backbone(x, train=train)
        if self.tap not in taps:
            raise ValueError(f"backbone returned taps {sorted(taps)}, expected {self.tap!r}")
        return taps[self.tap]

    def add_on(self, f: jax.Array) -> jax.Array:
        """Backbone map -> sigmoid embeddings (N, h, w, D)."""
        f = nn.relu(self.add_on_0(self.toplayer(f)))
        return nn.sigmoid(self.add_on_1(f))

    def embed(self, x: jax.Array, train: bool) -> jax.Array:
        """Images (N, H, W, 3) -> sigmoid embeddings (N, h, w, D)."""
        return self.add_on(self.backbone_map(x, train))

    def classify(self, z: jax.Array) -> dict[str, jax.Array]:
        """Embeddings -> distance maps (N, h, w, P), min distances (N, P), logits (N, C)."""
        distances = l2_distance_maps(z, self.prototype_vectors)
        min_distances = min_pool(distances)
        logits = self.last_layer(exp_similarity(min_distances, self.similarity_scale))
        return {"distances": distances, "min_distances": min_distances, "logits": logits}

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.pretrain_head and self.is_initializing():
            self.pretrain_logits(x, train)
        f = self.backbone_map(x, train)
        z = self.add_on(f)
        # Pooled backbone features: the inputs of the export's out-of-distribution statistics.
        pooled = jnp.mean(f.astype(jnp.float32), axis=(1, 2))
        return {"embeddings": z, "features": pooled, **self.classify(z)}


def build_model(
    model_cfg: ml_collections.ConfigDict, num_classes: int, pretrain_head: bool = False
) -> CiplNet:
    """CiplNet from ``config.model`` (backbone name, prototypes per class, proto dim, BN mode);
    ``pretrain_head`` adds the GAP linear head of the in-domain pretraining phase."""
    if model_cfg.prototypes_per_class < 1:
        raise ValueError(
            f"model.prototypes_per_class must be >= 1, got {model_cfg.prototypes_per_class}"
        )
    tap = model_cfg.get("tap", "") or BACKBONE_TAP
    last = get_spec(model_cfg.backbone).default_taps[-1]
    backbone = build_backbone(
        model_cfg.backbone,
        taps=tuple(dict.fromkeys((tap, last) if pretrain_head else (tap,))),
        with_head=False,
        bn_running_var=model_cfg.get("bn_running_var", "unbiased"),
        dtype=model_cfg.get("compute_dtype", "float32"),
        conv1x1=model_cfg.get("conv1x1", "xla"),
        stem_conv=model_cfg.get("stem_conv", "xla"),
        conv_backend=model_cfg.get("conv_backend", "xla"),
    )
    scale = float(model_cfg.get("similarity_scale", 0.0)) or float(model_cfg.proto_dim)
    return CiplNet(
        backbone=backbone,
        backbone_channels=backbone_channels(model_cfg.backbone, tap),
        num_classes=num_classes,
        prototypes_per_class=int(model_cfg.prototypes_per_class),
        proto_dim=int(model_cfg.proto_dim),
        similarity_scale=scale,
        tap=tap,
        pretrain_head=pretrain_head,
        pretrain_tap=last,
    )

"""Backbones (Flax Linen) with named feature taps, and PyTorch weight import.

Usage::

    model = build_backbone("densenet121", taps=("block4_prenorm",))
    variables = model.init(rng, x, train=False)          # x: NHWC float32, ImageNet-normalised
    taps = model.apply(variables, x, train=False)         # {"block4_prenorm": (N, h, w, 1024)}
    taps, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])

Names: resnet18/34/50, densenet121/169, vgg16(_bn), vgg19(_bn), convnext_tiny, and the small
CPU variants resnet_tiny, densenet_tiny, convnext_tiny_test (same code and taps).
"""

from __future__ import annotations

from jaxproto.backbones.registry import (
    BACKBONES,
    BackboneSpec,
    backbone_channels,
    backbone_stride,
    build_backbone,
    get_spec,
    tap_centre,
)
from jaxproto.backbones.torch_import import (
    CheckpointMismatchError,
    convert_state_dict,
    init_with_pretrained,
    load_pretrained,
    merge_pretrained,
    read_state_dict,
)

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "CheckpointMismatchError",
    "backbone_channels",
    "backbone_stride",
    "build_backbone",
    "convert_state_dict",
    "init_with_pretrained",
    "get_spec",
    "load_pretrained",
    "merge_pretrained",
    "read_state_dict",
    "tap_centre",
]

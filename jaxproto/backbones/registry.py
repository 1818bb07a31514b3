"""Registry of backbones: name -> Linen class + hyper-parameters + tap geometry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxproto.backbones import convnext, densenet, resnet, vgg, vit
from jaxproto.backbones.layers import check_taps, compute_dtype


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its family, Linen class, hyper-parameters and tap geometry."""

    family: str
    module: type[nn.Module]
    config: Mapping[str, Any]
    tap_info: Callable[..., dict[str, tuple[int, int]]]
    default_taps: tuple[str, ...]

    @property
    def taps(self) -> tuple[str, ...]:
        """Every tap name this backbone can return."""
        return tuple(self.tap_info(**self.config))


def _register() -> dict[str, BackboneSpec]:
    families = (
        ("resnet", resnet.ResNet, resnet.CONFIGS, resnet.tap_info, ("layer4",)),
        ("densenet", densenet.DenseNet, densenet.CONFIGS, densenet.tap_info, ("final_relu",)),
        ("vgg", vgg.VGG, vgg.CONFIGS, vgg.tap_info, ("features",)),
        ("convnext", convnext.ConvNeXt, convnext.CONFIGS, convnext.tap_info, ("stage4",)),
        ("vit", vit.VisionTransformer, vit.CONFIGS, vit.tap_info, ("cls",)),
    )
    out = {}
    for family, module, configs, info, default in families:
        for name, cfg in configs.items():
            out[name] = BackboneSpec(family, module, dict(cfg), info, default)
    return out


BACKBONES: dict[str, BackboneSpec] = _register()


def get_spec(name: str) -> BackboneSpec:
    """The registered spec for ``name``; ValueError listing the valid names otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]


def build_backbone(
    arch: str,
    taps: Sequence[str] | None = None,
    with_head: bool = False,
    num_classes: int = 1000,
    bn_running_var: str = "unbiased",
    dtype: Any = jnp.float32,
    name: str | None = None,
    conv1x1: str = "xla",
    stem_conv: str = "xla",
    conv_backend: str = "xla",
    **overrides: Any,
) -> nn.Module:
    """The Linen module for backbone ``arch`` returning a dict of ``taps``.

    ``taps`` defaults to the family's last feature map. ``name`` is the Linen submodule name when
    built inside a larger model (e.g. "backbone"). ``overrides`` replace hyper-parameters (e.g.
    ``block_config`` for densenet_tiny, ``drop_path_rate`` for ConvNeXt, ``dropout_rate`` for
    VGG's head). ``bn_running_var`` in {"unbiased" (PyTorch), "biased" (Flax)}. ``dtype`` is the
    compute dtype (a jnp dtype or a ``model.compute_dtype`` name: "float32", "bfloat16");
    parameters and the returned taps are float32 either way. ``conv1x1`` is ``model.conv1x1``
    (``layers.CONV1X1_MODES``: "matmul" or "xla", equal within float32 rounding) and
    ``stem_conv`` is ``model.stem_conv`` (``layers.STEM_CONV_MODES``; DenseNet and ResNet stems);
    ``conv_backend`` is ``model.conv_backend`` (``layers.CONV_BACKENDS``; DenseNet and ResNet).
    """
    spec = get_spec(arch)
    dtype = compute_dtype(dtype) if isinstance(dtype, str) else dtype
    fields = {f.name for f in dataclasses.fields(spec.module)} - {"parent", "name"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{arch}: unknown options {unknown}; valid: {sorted(fields)}")
    kwargs = {**spec.config, **overrides}
    taps = tuple(taps) if taps is not None else spec.default_taps
    available = spec.tap_info(**{k: kwargs[k] for k in spec.config})
    check_taps(arch, taps, tuple(available), with_head)
    return spec.module(
        taps=taps,
        with_head=with_head,
        num_classes=num_classes,
        bn_running_var=bn_running_var,
        dtype=dtype,
        conv1x1=conv1x1,
        stem_conv=stem_conv,
        conv_backend=conv_backend,
        name=name,
        **kwargs,
    )


def backbone_channels(name: str, tap: str, num_classes: int = 1000, **overrides: Any) -> int:
    """Channels of ``tap`` (last axis of the map/vector) for backbone ``name``."""
    return _tap(name, tap, num_classes, overrides)[0]


def backbone_stride(name: str, tap: str, **overrides: Any) -> int:
    """Input pixels per feature-map cell of a map tap (0 for vector taps)."""
    return _tap(name, tap, 1000, overrides)[1]


def tap_centre(name: str, tap: str, **overrides: Any) -> float:
    """Where cell 0 of a map tap looks: the input coordinate of its receptive-field centre.

    Continuous pixel coordinates (pixel i spans [i, i + 1)); cell j is centred at
    ``tap_centre + stride * j``. Odd kernels with symmetric padding (strided convolutions, 3x3
    max pools) keep the centre on pixel 0 (0.5); each 2x2 average pool or patchify step moves it
    by half an input cell. So ResNet sits at 0.5 rather than the stride / 2 a plain resize
    assumes, DenseNet at 0.5 + 2 (2^t - 1) after t transitions, VGG and ConvNeXt at stride / 2.
    """
    spec = get_spec(name)
    stride = backbone_stride(name, tap, **overrides)
    if stride == 0:
        raise ValueError(f"{name}: tap {tap!r} is a vector, not a feature map")
    if spec.family == "resnet":
        return 0.5
    if spec.family == "densenet":
        config = {**spec.config, **{k: v for k, v in overrides.items() if k in spec.config}}
        transitions = len(config["block_config"]) - 1
        return 0.5 + 2.0 * (2**transitions - 1)
    return stride / 2.0


def _tap(name: str, tap: str, num_classes: int, overrides: Mapping[str, Any]) -> tuple[int, int]:
    spec = get_spec(name)
    kwargs = {**spec.config, **{k: v for k, v in overrides.items() if k in spec.config}}
    info = spec.tap_info(**kwargs, num_classes=num_classes)
    if tap not in info:
        raise ValueError(f"{name}: unknown tap {tap!r}; available: {list(info)}")
    return info[tap]

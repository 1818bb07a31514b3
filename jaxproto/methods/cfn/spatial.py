"""Where an SAE latent fires in an image: the latent read at every position of the backbone map
that is pooled into the embedding (the concept page's activation overlays).

The embedding is the global average f = mean_{x,y} f(x, y) of the tap's map (cfn.md §3:
DenseNet ReLU(norm5) features, ResNet layer4), and the SAE pre-activation is affine, so
W_e (f - b_d) + b_e = mean_{x,y} [W_e (f(x, y) - b_d) + b_e]: the latent's pre-activation on
the image is exactly the spatial mean of its per-position pre-activations. The map
a_j(x, y) = ReLU(W_e (f(x, y) - b_d) + b_e)_j therefore shows which positions push latent j
up (by convexity z_j <= mean_{x,y} a_j(x, y), with equality where no position is negative).
Taps that are not pooled maps have no such reading: ConvNeXt's embedding is a LayerNorm
applied after pooling (not a mean of per-position terms) and ViT's is the CLS token, which is
not an average of the patch tokens; for them no map is drawn (`has_maps` is False).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.backbones.registry import backbone_stride, build_backbone, tap_centre
from jaxproto.core import logging as log_lib
from jaxproto.data.records import Record
from jaxproto.methods.cfn import data as data_lib


def has_maps(backbone: str, tap: str) -> bool:
    """Whether the embedding tap is a spatial map that is average-pooled (see module doc)."""
    return backbone_stride(backbone, tap) > 0


def grid(backbone: str, tap: str, scale: float) -> tuple[float, float]:
    """(cell size, cell-0 centre) of the tap in pixels of the model input resized by ``scale``
    (for `jaxproto.viz.overlays.heatmap_overlay`'s ``grid``)."""
    return backbone_stride(backbone, tap) * scale, tap_centre(backbone, tap) * scale


def latent_maps(fmap: np.ndarray, sae: dict, latents: Sequence[int]) -> np.ndarray:
    """a_j(x, y) = ReLU(W_e (f(x, y) - b_d) + b_e)_j for a map (..., H, W, D): (..., H, W, J)."""
    kernel = np.asarray(sae["encoder"]["kernel"])[:, list(latents)]
    bias = np.asarray(sae["encoder"]["bias"])[list(latents)]
    pre = (np.asarray(fmap, np.float32) - np.asarray(sae["tied_bias"])) @ kernel + bias
    return np.maximum(pre, 0.0)


def tap_fn(model, opaque: dict):
    """``fn(images (N, S, S, 3)) -> the embedding tap's map (N, H, W, D)`` of model-ready images
    under the opaque model ``opaque`` ({"params", "batch_stats"}); ``model`` = config.model."""
    dtype = model.get("compute_dtype", "float32")
    net = build_backbone(
        model.backbone,
        taps=(model.tap,),
        with_head=False,
        dtype=dtype,
        conv1x1=model.get("conv1x1", "xla"),
        stem_conv=model.get("stem_conv", "xla"),
        conv_backend=model.get("conv_backend", "xla"),
    )
    variables = {
        "params": opaque["params"]["backbone"],
        "batch_stats": opaque.get("batch_stats", {}).get("backbone", {}),
    }
    apply = jax.jit(lambda v, x: net.apply(v, x, train=False)[model.tap])
    return lambda images: np.asarray(apply(variables, jnp.asarray(images)), np.float32)


def probing_maps(
    model,
    opaque: dict,
    sae: dict,
    records: Sequence[Record],
    pairs: dict[int, list[int]],
    clip_norm: bool,
    batch_size: int,
) -> dict[tuple[int, int], np.ndarray]:
    """{(row, latent): a_latent map (H, W)} for ``pairs`` = {training row: latents whose probing
    images include it}, one backbone pass per distinct image, in batches."""
    rows = sorted(pairs)
    size = int(model.image_size)
    out: dict[tuple[int, int], np.ndarray] = {}
    fn = tap_fn(model, opaque)
    progress = log_lib.Progress(len(rows), 0, "latent maps", 1)
    try:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s : s + batch_size]
            x = np.stack([data_lib.eval_image(records[r].path, size, clip_norm) for r in chunk])
            pad = batch_size - len(x)  # one compiled shape for every batch
            fmaps = fn(np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]))[: len(x)]
            for r, fmap in zip(chunk, fmaps, strict=True):
                maps = latent_maps(fmap, sae, pairs[r])
                for k, j in enumerate(pairs[r]):
                    out[(r, j)] = maps[..., k]
            progress.update(s + len(chunk))
    finally:
        progress.close()
    return out

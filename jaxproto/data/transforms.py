"""Image transforms: ImageNet normalisation, eval resizing and the methods' train augmentations.

Written with numpy + OpenCV (no torch, no PIL in the hot path): OpenCV's warps, resizes and
colour conversions release the GIL and are several times faster than PIL on the 2-core machines
this project targets, and grain can run them in threads or worker processes. The eval resize
re-implements PIL's antialiased bilinear filter (what the original CIPL/X-MIR code used) with
separable numpy taps. Train transforms are callables ``(img_uint8 HxWx3, rng) -> float32`` whose
randomness comes only from the given ``np.random.Generator``.

Augmentation semantics follow torchvision/PIL as used by the original code (cipl.md §3.4,
xmir.md §1, csr.md §5); Python-`random` parity is impossible, so only distributions match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import sparse

from jaxproto.data.records import Box

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def check_image(img: np.ndarray) -> np.ndarray:
    """``img`` as a uint8 HxWx3 array, or a ValueError naming what it is."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} of shape {img.shape}")
    return img


def imagenet_normalize(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 (x/255 - mean) / std with ImageNet statistics."""
    x = check_image(img).astype(np.float32)
    x *= _NORM_SCALE  # one multiply-add: (x/255 - mean)/std = x * s + o
    x += _NORM_OFFSET
    return x


# --------------------------------------------------------------------------- resizing


def _pil_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of PIL's antialiased bilinear (triangle) filter along one axis."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = fscale  # triangle filter support 1, widened by the downscale factor
    centers = (np.arange(out_size) + 0.5) * scale
    lo = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    hi = np.minimum(np.trunc(centers + support + 0.5), in_size).astype(np.int64)
    ntaps = int((hi - lo).max())
    idx = lo[:, None] + np.arange(ntaps)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs((idx - centers[:, None] + 0.5) / fscale))
    w = np.where(idx < hi[:, None], w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return np.minimum(idx, in_size - 1), w.astype(np.float32)


def _resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """Applies the PIL taps along ``axis`` as a sparse (out x in) matrix product."""
    n = img.shape[axis]
    if n == out_size:
        return img
    idx, w = _pil_taps(n, out_size)
    rows = np.repeat(np.arange(out_size), idx.shape[1])
    mat = sparse.csr_matrix((w.ravel(), (rows, idx.ravel())), shape=(out_size, n))
    moved = np.moveaxis(img, axis, 0)
    out = mat @ moved.reshape(n, -1)
    return np.moveaxis(out.reshape((out_size,) + moved.shape[1:]), 0, axis)


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL-style antialiased bilinear resize of a uint8 HxWxC image (float math, uint8 out)."""
    x = img.astype(np.float32)
    x = _resample_axis(x, width, axis=1)
    x = _resample_axis(x, height, axis=0)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _cv_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fast resize for augmentation: area averaging when shrinking by more than 1.5x (against
    aliasing), bilinear otherwise."""
    shrink = max(img.shape[1] / width, img.shape[0] / height)
    flag = cv2.INTER_AREA if shrink > 1.5 else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=flag)


def eval_transform(img: np.ndarray, size: int) -> np.ndarray:
    """Test-time transform: bilinear (PIL antialiased) resize to size x size + ImageNet norm."""
    img = check_image(img)
    return imagenet_normalize(resize_bilinear(img, size, size))


def scale_boxes(
    boxes: Sequence[Box], from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[Box, ...]:
    """Rescales boxes from an image of (width, height) ``from_size`` to ``to_size``."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return tuple(Box(b.label, b.x * sx, b.y * sy, b.w * sx, b.h * sy, b.is_concept) for b in boxes)


# --------------------------------------------------------------------------- geometric ops


def random_resized_crop_box(
    h: int,
    w: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, height, width)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(
    img: np.ndarray,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> np.ndarray:
    top, left, ch, cw = random_resized_crop_box(img.shape[0], img.shape[1], rng, scale, ratio)
    return _cv_resize(img[top : top + ch, left : left + cw], size, size)

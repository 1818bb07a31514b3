"""CIPL's data: its train augmentations (cipl.md §3.4), the pair sampler and sampler weights
(§3.3), and the example functions the grain pipeline calls.

Transforms are numpy + OpenCV callables ``(img_uint8 HxWx3, rng) -> float32`` whose randomness
comes only from the given ``np.random.Generator``; their semantics follow torchvision/PIL as
used by the official code (Python-``random`` parity is impossible, so only distributions match).
Samplers are pure functions of ``(seed, epoch)`` (``jaxproto.data.pipeline.Sampler``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from scipy import ndimage

from jaxproto.common.errors import DataError
from jaxproto.data import samplers, transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Record


def _maybe_flip(img: np.ndarray, flip: bool, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.flip(img, axis=axis)) if flip else img


# --------------------------------------------------------------------------- photometric ops


def _gray(img: np.ndarray) -> np.ndarray:
    """PIL 'L' conversion (ITU-R 601-2 luma, rounded to uint8), HxW."""
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _blend(img: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """PIL ImageEnhance: other + factor * (img - other), rounded and clipped to uint8."""
    if np.isscalar(other):
        return cv2.addWeighted(img, factor, img, 0.0, (1.0 - factor) * float(other))
    return cv2.addWeighted(img, factor, other, 1.0 - factor, 0.0)


def adjust_brightness(img: np.ndarray, f: float) -> np.ndarray:
    return _blend(img, 0.0, f)


def adjust_contrast(img: np.ndarray, f: float) -> np.ndarray:
    return _blend(img, float(int(_gray(img).mean() + 0.5)), f)


def adjust_saturation(img: np.ndarray, f: float) -> np.ndarray:
    return _blend(img, cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB), f)


def adjust_sharpness(img: np.ndarray, f: float) -> np.ndarray:
    """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image, borders untouched."""
    k = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REPLICATE)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    return _blend(img, smooth, f)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotates hue by ``shift`` turns like torchvision's PIL path: 8-bit HSV, hue += shift*255
    with wrap-around."""
    if shift == 0:
        return img
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)  # uint8 hue over the full [0, 256) range
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(np.int8(np.uint8(shift * 255 % 256)))) % 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def color_jitter(
    img: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.01,
) -> np.ndarray:
    """torchvision ColorJitter: the four adjustments in a random order, factors U[1±x]."""
    ops = [
        (adjust_brightness, rng.uniform(1 - brightness, 1 + brightness)),
        (adjust_contrast, rng.uniform(1 - contrast, 1 + contrast)),
        (adjust_saturation, rng.uniform(1 - saturation, 1 + saturation)),
        (adjust_hue, rng.uniform(-hue, hue)),
    ]
    for i in rng.permutation(4):
        fn, f = ops[i]
        img = fn(img, f)
    return img


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)


def elastic_deform(
    img: np.ndarray,
    rng: np.random.Generator,
    sigma: float,
    points: int = 3,
    grayscale: bool = True,
) -> np.ndarray:
    """Random-grid elastic deformation (the ``elasticdeform.deform_random_grid`` model).

    A ``points`` x ``points`` grid of control displacements ~ N(0, sigma) px per axis, spanning
    the image corner to corner, is upsampled with cubic B-spline interpolation to a dense field;
    the image is resampled (bicubic, zero outside). ``grayscale`` converts to luma first, as
    CIPL does (cipl.md §3.4; flag ``odir_elastic_grayscale``).
    """
    h, w = img.shape[:2]
    disp = rng.normal(0.0, sigma, size=(2, points, points))
    ay, ax = spline_basis(points, h), spline_basis(points, w)
    dy = ay @ disp[0] @ ax.T
    dx = ay @ disp[1] @ ax.T
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    src = _gray(img) if grayscale else img
    out = cv2.remap(
        src,
        (gx + dx).astype(np.float32),
        (gy + dy).astype(np.float32),
        interpolation=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.repeat(out[..., None], 3, axis=2) if grayscale else out


@functools.lru_cache(maxsize=32)
def spline_basis(points: int, n: int) -> np.ndarray:
    """(n, points) weights: cubic B-spline interpolation of ``points`` control values placed at
    linspace(0, n-1, points), evaluated at every pixel (scipy's order-3 spline, mirror ends)."""
    coords = np.linspace(0.0, points - 1.0, n)[None, :]
    eye = np.eye(points)
    cols = [ndimage.map_coordinates(eye[j], coords, order=3, mode="mirror") for j in range(points)]
    basis = np.stack(cols, axis=1).astype(np.float32)
    basis.flags.writeable = False  # cached and shared
    return basis


def cutout_abs(img: np.ndarray, rng: np.random.Generator, size: int = 25) -> np.ndarray:
    """Black ``size`` px square at a uniformly random centre (clipped at the borders)."""
    h, w = img.shape[:2]
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    x0, y0 = int(max(0, cx - size / 2)), int(max(0, cy - size / 2))
    x1, y1 = int(min(w, x0 + size)), int(min(h, y0 + size))
    out = img.copy()
    out[y0:y1, x0:x1] = 0
    return out


def cipl_rand_augment(
    img: np.ndarray, rng: np.random.Generator, elastic_grayscale: bool = True
) -> np.ndarray:
    """CIPL's RandAugment subset (cipl.md §3.4): one op uniformly from Color, Contrast,
    Brightness, Sharpness (factor U[0.8, 1.2]), elastic deformation (sigma U[5, 20], 3x3
    control points), CutoutAbs (25 px black square). The magnitude ``m`` is ignored."""
    op = int(rng.integers(6))
    if op < 4:
        fn = (adjust_saturation, adjust_contrast, adjust_brightness, adjust_sharpness)[op]
        return fn(img, rng.uniform(0.8, 1.2))
    if op == 4:
        return elastic_deform(img, rng, rng.uniform(5.0, 20.0), grayscale=elastic_grayscale)
    return cutout_abs(img, rng)


# --------------------------------------------------------------------------- geometric ops


def affine_matrix(
    angle: float, translate: tuple[float, float], scale: float, shear: tuple[float, float],
    center: tuple[float, float],
) -> np.ndarray:  # fmt: skip
    """Forward 2x3 matrix of torchvision's RandomAffine (rotation/scale/shear about the centre,
    then translation), in pixel coordinates."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    rss = scale * np.array([[a, b], [c, d]])
    cx, cy = center
    t = np.array([cx + translate[0], cy + translate[1]]) - rss @ np.array([cx, cy])
    return np.concatenate([rss, t[:, None]], axis=1).astype(np.float32)


def random_affine(
    img: np.ndarray,
    rng: np.random.Generator,
    degrees: float,
    translate: float,
    scale: tuple[float, float],
    shear: float,
) -> np.ndarray:
    """torchvision RandomAffine(degrees, (translate, translate), scale, (-s, s, -s, s), fill=0)
    with its default nearest-neighbour interpolation."""
    h, w = img.shape[:2]
    angle = rng.uniform(-degrees, degrees)
    tx = round(rng.uniform(-translate * w, translate * w))
    ty = round(rng.uniform(-translate * h, translate * h))
    s = rng.uniform(*scale)
    sh = (rng.uniform(-shear, shear), rng.uniform(-shear, shear))
    m = affine_matrix(angle, (tx, ty), s, sh, (w * 0.5, h * 0.5))
    return cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


# --------------------------------------------------------------------------- transforms


class CiplTrainTransform:
    """CIPL warm-up single view (cipl.md §3.4): RandAugment on the input resolution ->
    RandomResizedCrop(size, scale, ratio) -> ColorJitter -> HFlip -> RandomAffine -> VFlip ->
    ImageNet normalisation. Defaults are the chest-X-ray values; ODIR passes its own."""

    def __init__(
        self,
        size: int,
        crop_scale: tuple[float, float] = (0.65, 1.0),
        crop_ratio: tuple[float, float] = (0.65, 1.35),
        degrees: float = 30.0,
        translate: float = 0.3,
        scale: tuple[float, float] = (0.8, 1.2),
        shear: float = 25.0,
        elastic_grayscale: bool = True,
    ):
        self.size, self.crop_scale, self.crop_ratio = size, crop_scale, crop_ratio
        self.affine = (degrees, translate, scale, shear)
        self.elastic_grayscale = elastic_grayscale

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = cipl_rand_augment(transforms.check_image(img), rng, self.elastic_grayscale)
        img = transforms.random_resized_crop(img, rng, self.size, self.crop_scale, self.crop_ratio)
        img = color_jitter(img, rng)
        img = _maybe_flip(img, rng.random() < 0.5, axis=1)
        img = random_affine(img, rng, *self.affine)
        img = _maybe_flip(img, rng.random() < 0.5, axis=0)
        return transforms.imagenet_normalize(img)


class CiplPairViewTransform:
    """CIPL main-stage views (cipl.md §3.4): one shared geometric part — RandomResizedCrop to
    ``size + pad`` (544 for 512) -> RandAugment -> HFlip -> RandomAffine -> VFlip — then for x
    and x' independently ColorJitter -> GaussianBlur(sigma U[0.5, 2], p 0.5) ->
    RandomResizedCrop(size, scale 0.95-1, ratio 0.95-1.05), then the same HFlip/VFlip on both.
    Returns (x, x') float32 size x size x 3: they differ by jitter, blur and a <= 5 % crop."""

    def __init__(
        self,
        size: int,
        pad: int | None = None,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (0.5, 2.0),
        degrees: float = 45.0,
        translate: float = 0.3,
        scale: tuple[float, float] = (0.7, 1.3),
        shear: float = 40.0,
        elastic_grayscale: bool = True,
    ):
        self.size = size
        self.big = size + (size // 16 if pad is None else pad)
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.affine = (degrees, translate, scale, shear)
        self.elastic_grayscale = elastic_grayscale

    def geometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The shared part, at ``size + pad``."""
        img = transforms.random_resized_crop(
            transforms.check_image(img), rng, self.big, self.crop_scale, self.crop_ratio
        )
        img = cipl_rand_augment(img, rng, self.elastic_grayscale)
        img = _maybe_flip(img, rng.random() < 0.5, axis=1)
        img = random_affine(img, rng, *self.affine)
        return _maybe_flip(img, rng.random() < 0.5, axis=0)

    def view(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One independent photometric view + the small final crop."""
        img = color_jitter(img, rng)
        if rng.random() < 0.5:
            img = gaussian_blur(img, rng.uniform(0.5, 2.0))
        return transforms.random_resized_crop(img, rng, self.size, (0.95, 1.0), (0.95, 1.05))

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        shared = self.geometric(img, rng)
        x, x2 = self.view(shared, rng), self.view(shared, rng)
        hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
        out = []
        for v in (x, x2):
            v = _maybe_flip(_maybe_flip(v, hflip, axis=1), vflip, axis=0)
            out.append(transforms.imagenet_normalize(v))
        return out[0], out[1]


class LightTrainTransform:
    """A mild policy for small procedural datasets (``data.augment.policy="light"``): resize,
    colour jitter and a horizontal flip. The official CIPL policy (RandAugment, strong affine,
    elastic deformation) is tuned for 86k chest X-rays and swamps a few hundred synthetic
    images trained for minutes."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = transforms.resize_bilinear(transforms.check_image(img), self.size, self.size)
        img = _maybe_flip(color_jitter(img, rng), rng.random() < 0.5, axis=1)
        return transforms.imagenet_normalize(img)


class LightPairViewTransform:
    """Two views (x, x') for the light policy: a shared resize and flip, independent jitter."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        base = transforms.resize_bilinear(transforms.check_image(img), self.size, self.size)
        flip = rng.random() < 0.5
        views = [_maybe_flip(color_jitter(base, rng), flip, axis=1) for _ in range(2)]
        return transforms.imagenet_normalize(views[0]), transforms.imagenet_normalize(views[1])


# --------------------------------------------------------------------------- sampling


def _check_multi_hot(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D multi-hot array [N, C], got shape {y.shape}")
    y = y > 0.5
    empty = np.flatnonzero(~y.any(axis=1))
    if empty.size:
        raise DataError(
            f"record {empty[0]} (and {empty.size - 1} more) has no positive label; every image "
            "needs at least one (the background class counts)"
        )
    return y


def inverse_frequency_class_weights(labels: np.ndarray) -> np.ndarray:
    """Raw CIPL class weights (cipl.md §3.3): total positives / positives of each class.

    Classes without positives get weight 0 (they can never be drawn anyway)."""
    y = _check_multi_hot(labels)
    counts = y.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    return w.astype(np.float32)


def cipl_image_weights(labels: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Image weight = mean of the class weights over the image's positive labels (cipl.md §3.3;
    the background/No-Finding class counts as a label)."""
    y = _check_multi_hot(labels)
    cw = np.asarray(class_weights, np.float64)
    if cw.shape != (y.shape[1],):
        raise ValueError(f"class_weights must have shape ({y.shape[1]},), got {cw.shape}")
    return ((y * cw).sum(axis=1) / y.sum(axis=1)).astype(np.float32)


class PairSampler:
    """CIPL image pairs (cipl.md §3.4 "Pair sampling"): image a from the inner sampler (weighted
    if ``weights`` is given, else a shuffle), one of a's positive labels uniformly, then b
    uniformly among all images with that label (b may equal a). Rows are (a, b)."""

    def __init__(self, labels: np.ndarray, seed: int, weights: np.ndarray | None = None):
        self.labels = _check_multi_hot(labels)
        n = self.labels.shape[0]
        self.seed = int(seed)
        self.inner = (
            samplers.ShuffleSampler(n, seed)
            if weights is None
            else samplers.WeightedSampler(weights, n, seed)
        )
        self.members = [np.flatnonzero(self.labels[:, c]) for c in range(self.labels.shape[1])]

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int) -> np.ndarray:
        a = self.inner.epoch(epoch)
        rng = np.random.default_rng([self.seed, int(epoch), 1])  # after inner's epoch check
        # argmax of uniform noise restricted to positives = a uniform pick among them.
        noise = np.where(self.labels[a], rng.random(self.labels[a].shape), -1.0)
        chosen = noise.argmax(axis=1)
        u = rng.random(a.size)
        b = np.empty_like(a)
        for c in np.unique(chosen):
            rows = np.flatnonzero(chosen == c)
            m = self.members[c]
            b[rows] = m[np.minimum((u[rows] * m.size).astype(np.int64), m.size - 1)]
        return np.stack([a, b], axis=1)


# --------------------------------------------------------------------------- examples


@dataclasses.dataclass
class SingleExample:
    """Sampler index -> one warm-up example (picklable for grain workers)."""

    records: Sequence[Record]
    transform: Callable

    def __call__(self, index: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        r = self.records[int(index)]
        return {
            "image": self.transform(load_image(r.path), rng),
            "labels": np.asarray(r.labels, np.float32),
        }


@dataclasses.dataclass
class PairExample:
    """Sampler row (a, b) -> two images, each with a student view and a teacher re-view."""

    records: Sequence[Record]
    transform: Callable

    def __call__(self, row: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = {}
        for key, idx in zip(("a", "b"), np.asarray(row).reshape(-1), strict=False):
            r = self.records[int(idx)]
            x, x_prime = self.transform(load_image(r.path), rng)
            out[f"image_{key}"], out[f"view_{key}"] = x, x_prime
            out[f"labels_{key}"] = np.asarray(r.labels, np.float32)
        return out

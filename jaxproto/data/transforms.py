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

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage, sparse

from jaxproto.data.records import Box

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} of shape {img.shape}")
    return img


def imagenet_normalize(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 (x/255 - mean) / std with ImageNet statistics."""
    x = _check_image(img).astype(np.float32)
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
    img = _check_image(img)
    return imagenet_normalize(resize_bilinear(img, size, size))


def resize_shorter_center_crop(img: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision ``Resize(resize)`` (shorter side, PIL bilinear) then ``CenterCrop(crop)``."""
    img = _check_image(img)
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = resize, int(resize * w / h)
    else:
        nh, nw = int(resize * h / w), resize
    img = resize_bilinear(img, nw, nh)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"center crop {crop} larger than resized image {nw}x{nh}")
    return img[top : top + crop, left : left + crop]


def xmir_eval_transform(img: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """X-MIR test transform (xmir.md §1): shorter side to 256, center crop 224, ImageNet norm."""
    return imagenet_normalize(resize_shorter_center_crop(img, resize, size))


def scale_boxes(
    boxes: Sequence[Box], from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[Box, ...]:
    """Rescales boxes from an image of (width, height) ``from_size`` to ``to_size``."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return tuple(Box(b.label, b.x * sx, b.y * sy, b.w * sx, b.h * sy, b.is_concept) for b in boxes)


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
    ay, ax = _spline_basis(points, h), _spline_basis(points, w)
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
def _spline_basis(points: int, n: int) -> np.ndarray:
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


def _maybe_flip(img: np.ndarray, flip: bool, axis: int) -> np.ndarray:
    return np.ascontiguousarray(np.flip(img, axis=axis)) if flip else img


# --------------------------------------------------------------------------- method transforms


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
        img = cipl_rand_augment(_check_image(img), rng, self.elastic_grayscale)
        img = random_resized_crop(img, rng, self.size, self.crop_scale, self.crop_ratio)
        img = color_jitter(img, rng)
        img = _maybe_flip(img, rng.random() < 0.5, axis=1)
        img = random_affine(img, rng, *self.affine)
        img = _maybe_flip(img, rng.random() < 0.5, axis=0)
        return imagenet_normalize(img)


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
        img = random_resized_crop(
            _check_image(img), rng, self.big, self.crop_scale, self.crop_ratio
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
        return random_resized_crop(img, rng, self.size, (0.95, 1.0), (0.95, 1.05))

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        shared = self.geometric(img, rng)
        x, x2 = self.view(shared, rng), self.view(shared, rng)
        hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
        out = []
        for v in (x, x2):
            v = _maybe_flip(_maybe_flip(v, hflip, axis=1), vflip, axis=0)
            out.append(imagenet_normalize(v))
        return out[0], out[1]


class XmirTrainTransform:
    """X-MIR train transform (xmir.md §1): shorter side to ``resize`` (PIL bilinear) ->
    CenterCrop(size) (or RandomResizedCrop(size) with ``rand_resize``) -> HFlip -> ImageNet."""

    def __init__(self, size: int = 224, resize: int = 256, rand_resize: bool = False):
        self.size, self.resize, self.rand_resize = size, resize, rand_resize

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _check_image(img)
        if self.rand_resize:
            img = random_resized_crop(img, rng, self.size, (0.08, 1.0), (3 / 4, 4 / 3))
        else:
            img = resize_shorter_center_crop(img, self.resize, self.size)
        img = _maybe_flip(img, rng.random() < 0.5, axis=1)
        return imagenet_normalize(img)


class CsrTrainTransform:
    """CSR train transform (csr.md §5, R1's choice): resize to size x size, random horizontal
    and (unless ``vflip=False``, advised for chest X-rays) vertical flips, ImageNet norm.
    Boxes are only used at evaluation, so they are not moved."""

    def __init__(self, size: int, vflip: bool = True):
        self.size, self.vflip = size, vflip

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = _check_image(img)
        if img.shape[:2] != (self.size, self.size):
            img = _cv_resize(img, self.size, self.size)
        img = _maybe_flip(img, rng.random() < 0.5, axis=1)
        if self.vflip:
            img = _maybe_flip(img, rng.random() < 0.5, axis=0)
        return imagenet_normalize(img)


class LightTrainTransform:
    """A mild policy for small procedural datasets (``data.augment.policy="light"``): resize,
    colour jitter and a horizontal flip. The official CIPL policy (RandAugment, strong affine,
    elastic deformation) is tuned for 86k chest X-rays and swamps a few hundred synthetic
    images trained for minutes."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = resize_bilinear(_check_image(img), self.size, self.size)
        img = _maybe_flip(color_jitter(img, rng), rng.random() < 0.5, axis=1)
        return imagenet_normalize(img)


class LightPairViewTransform:
    """Two views (x, x') for the light policy: a shared resize and flip, independent jitter."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        base = resize_bilinear(_check_image(img), self.size, self.size)
        flip = rng.random() < 0.5
        views = [_maybe_flip(color_jitter(base, rng), flip, axis=1) for _ in range(2)]
        return imagenet_normalize(views[0]), imagenet_normalize(views[1])

"""CFN's image transforms (cfn.md §2): train = RandomRotation(30) -> RandomHorizontalFlip ->
GaussianBlur(kernel 5, sigma ~ U(0.1, 2)) -> ColorJitter() (a no-op, left out) -> Resize(bicubic,
shorter side) -> CenterCrop -> CLIP (default) or ImageNet normalisation; test = the same
without the random steps."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from jaxproto.data import transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Record

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def _resize_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top : top + size, left : left + size]


def normalise(img: np.ndarray, clip_norm: bool) -> np.ndarray:
    """uint8 -> float32 with CLIP (the code's choice) or ImageNet statistics."""
    if not clip_norm:
        return transforms.imagenet_normalize(img)
    return (img.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def display_image(path: str, size: int) -> np.ndarray:
    """The test-time crop (uint8, before normalisation): what the model sees of the image."""
    return _resize_crop(load_image(path), size)


def eval_image(path: str, size: int, clip_norm: bool) -> np.ndarray:
    return normalise(display_image(path, size), clip_norm)


def random_rotation(img: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """torchvision RandomRotation(degrees): uniform angle, about the centre, nearest, fill 0."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w * 0.5 - 0.5, h * 0.5 - 0.5), rng.uniform(-degrees, degrees), 1)
    return cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


class TrainExample:
    """The augmentation above for record ``index`` (picklable for grain workers)."""

    def __init__(self, records: Sequence[Record], size: int, clip_norm: bool, augment) -> None:
        self.records = list(records)
        self.size, self.clip_norm = size, clip_norm
        self.degrees = float(augment.rotation_degrees)
        self.flip = bool(augment.hflip)
        self.blur = tuple(augment.blur_sigma)

    def __call__(self, index, rng: np.random.Generator) -> dict:
        record = self.records[int(index)]
        img = load_image(record.path)
        if self.degrees > 0:
            img = random_rotation(img, rng, self.degrees)
        if self.flip and rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        if self.blur[1] > 0:
            sigma = rng.uniform(*self.blur)
            img = cv2.GaussianBlur(img, (5, 5), sigmaX=sigma, sigmaY=sigma)
        image = normalise(_resize_crop(img, self.size), self.clip_norm)
        return {"image": image, "labels": record.labels}

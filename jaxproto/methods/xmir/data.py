"""X-MIR's data: the P x K sampler, the train and test transforms, the train example function.

Transforms follow torchvision/PIL as the original ``train.py`` uses them (specs/xmir.md §1):
``convert('RGB')`` -> ``Resize(256)`` (shorter side, PIL bilinear) -> ``CenterCrop(224)`` (or
``RandomResizedCrop(224)`` with ``rand_resize``) -> ``RandomHorizontalFlip()`` -> ImageNet
normalisation; the test transform drops the random steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data.images import load_image
from jaxproto.data.records import Record
from jaxproto.data.transforms import (
    check_image,
    imagenet_normalize,
    random_resized_crop,
    resize_bilinear,
)


def class_labels(records: Sequence[Record]) -> np.ndarray:
    """Integer class of each single-label record (its one-hot label vector's arg-max)."""
    out = np.empty((len(records),), np.int64)
    for i, r in enumerate(records):
        if np.count_nonzero(r.labels) != 1:
            raise DataError(
                f"{r.path}: X-MIR needs exactly one class per image, got labels {r.labels}"
            )
        out[i] = int(np.argmax(r.labels))
    return out


# --------------------------------------------------------------------------- sampling


class PKSampler:
    """X-MIR's P×K batches (xmir.md §2.2), flattened: each block of P·K entries is one batch of
    P distinct labels (random order) times K images each.

    Groups with fewer than K images are dropped; every epoch each group is reshuffled; batches
    are drawn while at least P groups have >= K unused images. When P equals the number of
    groups (every X-MIR setting) the epoch length is fixed (min group size // K batches);
    otherwise it can vary between epochs and ``len`` is epoch 0's length. A pure function of
    ``(seed, epoch)``, so a resumed run replays the same stream.
    """

    def __init__(self, labels: np.ndarray, P: int, K: int, seed: int):
        y = np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"PKSampler needs 1-D integer labels, got {y.dtype} {y.shape}")
        if P <= 0 or K <= 0:
            raise ValueError(f"P and K must be > 0, got P={P}, K={K}")
        self.P, self.K, self.seed = int(P), int(K), int(seed)
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
        self.groups = [g for g in groups if g.size >= self.K]
        if len(self.groups) < self.P:
            raise DataError(
                f"PKSampler: only {len(self.groups)} labels have >= K={self.K} images, "
                f"need P={self.P}"
            )
        self.num_entries = self.epoch(0).size

    def __len__(self) -> int:
        return self.num_entries

    def epoch(self, epoch: int) -> np.ndarray:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rng = np.random.default_rng([self.seed, int(epoch), 0])
        groups = [rng.permutation(g) for g in self.groups]
        cursor = np.zeros(len(groups), np.int64)
        sizes = np.array([g.size for g in groups])
        out = []
        while True:
            alive = np.flatnonzero(sizes - cursor >= self.K)
            if alive.size < self.P:
                break
            for g in rng.choice(alive, size=self.P, replace=False):
                out.append(groups[g][cursor[g] : cursor[g] + self.K])
                cursor[g] += self.K
        return np.concatenate(out) if out else np.zeros((0,), np.int64)


class SubsetSampler:
    """Runs ``inner`` over a subset of the records and maps its indices back to all records."""

    def __init__(self, inner: PKSampler, subset: np.ndarray):
        self.inner = inner
        self.subset = np.asarray(subset)

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int) -> np.ndarray:
        return self.subset[self.inner.epoch(epoch)]


# --------------------------------------------------------------------------- transforms


def resize_shorter_center_crop(img: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision ``Resize(resize)`` (shorter side, PIL bilinear) then ``CenterCrop(crop)``
    (top = round((h - crop) / 2), torchvision's rounding) of a uint8 HxWx3 image."""
    img = check_image(img)
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


def eval_transform(img: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """X-MIR test transform (xmir.md §1): shorter side to 256, center crop 224, ImageNet norm."""
    return imagenet_normalize(resize_shorter_center_crop(img, resize, size))


class TrainTransform:
    """X-MIR train transform (xmir.md §1): shorter side to ``resize`` (PIL bilinear) ->
    CenterCrop(size) (or RandomResizedCrop(size) with ``rand_resize``) -> HFlip -> ImageNet."""

    def __init__(self, size: int = 224, resize: int = 256, rand_resize: bool = False):
        self.size, self.resize, self.rand_resize = size, resize, rand_resize

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rand_resize:
            img = random_resized_crop(check_image(img), rng, self.size, (0.08, 1.0), (3 / 4, 4 / 3))
        else:
            img = resize_shorter_center_crop(img, self.resize, self.size)
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
        return imagenet_normalize(img)


class TrainExample:
    """Decode -> X-MIR train augmentation; picklable for grain workers."""

    def __init__(
        self,
        records: Sequence[Record],
        labels: np.ndarray,
        image_size: int,
        resize: int,
        rand_resize: bool,
    ):
        self.paths = [r.path for r in records]
        self.labels = labels
        self.transform = TrainTransform(image_size, resize, rand_resize)

    def __call__(self, index, rng: np.random.Generator) -> dict:
        i = int(index)
        image = self.transform(load_image(self.paths[i]), rng)
        return {"image": np.ascontiguousarray(image, np.float32), "label": np.int32(self.labels[i])}

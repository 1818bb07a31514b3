"""Med-MICN's example functions: Resize(256) → CenterCrop(224) → ImageNet normalisation (§2),
the integer class and the concept vector; an optional horizontal flip for training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxproto.data import transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Record, concept_vector, single_class

AUGMENTS = ("none", "flip")


def target_of(record: Record) -> int:
    """The record's single task class (spec: a softmax over classes)."""
    return single_class(record, "Med-MICN")


def concepts_of(record: Record, num_concepts: int) -> np.ndarray:
    """The record's concept labels (float32); DataError naming the record otherwise."""
    return concept_vector(record, num_concepts, "Med-MICN")


def preprocess(image: np.ndarray, image_size: int, resize: int) -> np.ndarray:
    """Shorter side to ``resize`` (0: image_size·256/224), centre crop, ImageNet mean/std."""
    resize = resize or int(round(image_size * 256 / 224))
    h, w = transforms.check_image(image).shape[:2]
    scale = resize / min(h, w)  # torchvision Resize(int): shorter side to ``resize``
    nh, nw = (resize, int(w * scale)) if h <= w else (int(h * scale), resize)
    top, left = int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"centre crop {image_size} larger than the resized {nw}x{nh} image")
    img = transforms.resize_bilinear(image, nw, nh)[
        top : top + image_size, left : left + image_size
    ]
    return transforms.imagenet_normalize(img)


class MedMicnExample:
    """Decode + preprocess (+ flip when training); picklable for grain workers. Records without
    concepts are allowed only at inference (``num_concepts`` = 0 skips them). ``cache`` keeps the
    preprocessed images in memory (per process) after the first epoch: procedural images cost
    far more to render than a tiny network step."""

    def __init__(
        self,
        records: Sequence[Record],
        image_size: int,
        resize: int,
        num_concepts: int,
        augment: str = "none",
        cache: bool = False,
    ):
        if augment not in AUGMENTS:
            raise ValueError(f"input.augment must be one of {AUGMENTS}, got {augment!r}")
        self.records = list(records)
        self.image_size, self.resize = int(image_size), int(resize)
        self.num_concepts = int(num_concepts)
        self.augment = augment
        self.cache: dict[str, np.ndarray] | None = {} if cache else None

    def _image(self, record: Record) -> np.ndarray:
        if self.cache is not None and record.path in self.cache:
            return self.cache[record.path]
        x = preprocess(load_image(record.path), self.image_size, self.resize).astype(np.float32)
        if self.cache is not None:
            self.cache[record.path] = x
        return x

    def example(self, record: Record, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        x = self._image(record)
        if rng is not None and self.augment == "flip" and rng.random() < 0.5:
            x = x[:, ::-1]
        out = {"image": np.ascontiguousarray(x, np.float32)}
        if self.num_concepts:
            out["label"] = np.int32(target_of(record))
            out["concepts"] = concepts_of(record, self.num_concepts)
        return out

    def __call__(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.example(self.records[int(index)], rng)

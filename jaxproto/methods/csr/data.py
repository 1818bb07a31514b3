"""CSR's data side (specs/csr.md §5, §7): record targets and concept labels, the train
transform and the picklable example function the trainer's grain pipeline calls."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from jaxproto.data import transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Record, concept_vector, single_class


def target_of(record: Record) -> int:
    """The record's single task class (spec: a softmax over classes)."""
    return single_class(record, "CSR")


def concepts_of(record: Record, num_concepts: int) -> np.ndarray:
    """The record's concept labels (float32); DataError naming the record otherwise."""
    return concept_vector(record, num_concepts, "CSR")


class CsrTrainTransform:
    """CSR train transform (csr.md §5, R1's choice): resize to size x size, random horizontal
    and (unless ``vflip=False``, advised for chest X-rays) vertical flips, ImageNet norm.
    Boxes are only used at evaluation, so they are not moved."""

    def __init__(self, size: int, vflip: bool = True):
        self.size, self.vflip = size, vflip

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        img = transforms.check_image(img)
        if img.shape[:2] != (self.size, self.size):
            # Area averaging when shrinking by more than 1.5x (against aliasing), else bilinear.
            shrink = max(img.shape[1], img.shape[0]) / self.size
            flag = cv2.INTER_AREA if shrink > 1.5 else cv2.INTER_LINEAR
            img = cv2.resize(img, (self.size, self.size), interpolation=flag)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        if self.vflip and rng.random() < 0.5:
            img = img[::-1]
        return transforms.imagenet_normalize(np.ascontiguousarray(img))


class CsrExample:
    """Decode + CSR train augmentation (or eval transform); picklable for grain workers."""

    def __init__(self, records: Sequence[Record], image_size: int, num_concepts: int, train: bool):
        self.records = list(records)
        self.image_size = int(image_size)
        self.num_concepts = num_concepts
        self.train = train
        self.augment = CsrTrainTransform(self.image_size)

    @staticmethod
    def image(record: Record, image_size: int) -> np.ndarray:
        """The test-time input of one record (eval transform), float32."""
        x = transforms.eval_transform(load_image(record.path), image_size)
        return np.ascontiguousarray(x, np.float32)

    def example(self, record: Record, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        if self.train:
            x = np.ascontiguousarray(self.augment(load_image(record.path), rng), np.float32)
        else:
            x = self.image(record, self.image_size)
        return {
            "image": x,
            "concepts": concepts_of(record, self.num_concepts),
            "label": np.int32(target_of(record)),
        }

    def __call__(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.example(self.records[int(index)], rng)

"""Baseline training examples: decode -> resize/normalise -> random horizontal flip."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxproto.data import transforms
from jaxproto.data.images import load_image
from jaxproto.data.records import Record


class TrainExample:
    """One augmented training example of a record (picklable for grain workers)."""

    def __init__(self, records: Sequence[Record], image_size: int):
        self.records = list(records)
        self.image_size = image_size

    def __call__(self, index, rng: np.random.Generator) -> dict:
        record = self.records[int(index)]
        image = transforms.eval_transform(load_image(record.path), self.image_size)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "labels": record.labels}

"""Weakly-supervised localisation of CIPL class maps against ground-truth boxes.

The official code has no localisation metric (cipl.md §6); this follows the paper's text: a
class map is the maximum over that class's prototype similarity maps, upsampled (bilinear) to
the network input size; per (image, class) with boxes we score the pointing game (arg-max
inside a box) and the IoU of the thresholded map with the union of the boxes. Thresholding at
0.5 * max (config ``localization.mode="max"``) is nearly vacuous for exp(-d/256) similarities,
which stay close to their maximum everywhere, so the default is min-max ("minmax": min + 0.5 *
(max - min)).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from jaxproto.core.metrics import map_ious, pointing_hits
from jaxproto.data.records import Record


def scaled_boxes(record: Record, label: int, image_size: int) -> list[tuple[float, ...]]:
    """The record's (non-concept) boxes of class ``label`` in network-input pixels."""
    if record.size is not None:
        sx, sy = image_size / record.size[0], image_size / record.size[1]
    else:
        sx = sy = 1.0
    return [
        (b.x * sx, b.y * sy, b.w * sx, b.h * sy)
        for b in record.boxes
        if not b.is_concept and b.label == label
    ]


def localization_metrics(
    class_maps: np.ndarray,
    records: Sequence[Record],
    image_size: int,
    class_ids: Sequence[int],
    threshold_frac: float = 0.5,
    mode: str = "minmax",
) -> dict[str, float]:
    """Pointing-game hit rate and mean IoU over (image, class) pairs with boxes.

    ``class_maps`` is (N, h, w, C) over all classes; returns {} when no record has boxes of a
    class in ``class_ids``. ``mode`` is `jaxproto.core.metrics.map_ious`'s: "max" keeps pixels
    >= threshold * max, "minmax" pixels >= min + threshold * (max - min).
    """
    maps, boxes = [], []
    wanted = {int(k) for k in class_ids}
    for i, r in enumerate(records):
        for k in sorted({b.label for b in r.boxes if not b.is_concept} & wanted):
            bx = [b for b in scaled_boxes(r, k, image_size) if b[2] > 0 and b[3] > 0]
            if not bx:
                continue
            m = np.asarray(class_maps[i, :, :, k], np.float32)
            maps.append(cv2.resize(m, (image_size, image_size), interpolation=cv2.INTER_LINEAR))
            boxes.append(bx)
    if not maps:
        return {}
    stacked = np.stack(maps)
    return {
        "pointing_game": float(pointing_hits(stacked, boxes).mean()),
        "loc_iou": float(map_ious(stacked, boxes, threshold_frac, mode=mode).mean()),
        "loc_count": float(len(maps)),
    }

"""Weakly-supervised localisation of CIPL class maps against ground-truth boxes.

The official code has no localisation metric (cipl.md §6); this follows the paper's text: a
class map is the maximum over that class's prototype similarity maps, upsampled (bilinear) to
the network input size with each cell at its receptive-field centre (``localization.grid``;
"stretch" is the plain ``cv2.resize`` of the official visualisations, which for a ResNet tap
shifts the map by almost half a cell). Per (image, class) with boxes we score the pointing
game (arg-max within 15 original-image pixels of a box, Zhang et al. 2016; and strictly
inside) and the IoU of the thresholded map with the union of the boxes.
Thresholding at 0.5 * max (config ``localization.mode="max"``) is nearly vacuous for
exp(-d/256) similarities, which stay close to their maximum everywhere, so the default is
min-max ("minmax": min + 0.5 * (max - min)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxproto.core.metrics import map_ious, pointing_hits
from jaxproto.data.records import Record
from jaxproto.viz.overlays import upsample_map


def scaled_boxes(
    record: Record, label: int, image_size: int, margin: float = 0.0
) -> list[tuple[float, ...]]:
    """The record's (non-concept) boxes of class ``label`` in network-input pixels, each grown
    by ``margin`` original-image pixels on every side."""
    if record.size is not None:
        sx, sy = image_size / record.size[0], image_size / record.size[1]
    else:
        sx = sy = 1.0
    mx, my = margin * sx, margin * sy
    return [
        ((b.x - margin) * sx, (b.y - margin) * sy, b.w * sx + 2 * mx, b.h * sy + 2 * my)
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
    grid: tuple[float, float] | None = None,
    pointing_tolerance: float = 15.0,
) -> dict[str, float]:
    """Pointing-game hit rates and mean IoU over (image, class) pairs with boxes.

    ``class_maps`` is (N, h, w, C) over all classes; returns {} when no record has boxes of a
    class in ``class_ids``. ``pointing_game`` counts an arg-max within ``pointing_tolerance``
    original-image pixels of a box (Zhang et al.'s definition uses 15); ``pointing_game_strict``
    needs it inside. ``mode`` is `jaxproto.core.metrics.map_ious`'s: "max" keeps pixels
    >= threshold * max, "minmax" pixels >= min + threshold * (max - min). ``grid`` is
    `jaxproto.viz.overlays.upsample_map`'s (None stretches the maps).
    """
    if pointing_tolerance < 0:
        raise ValueError(f"pointing tolerance must be >= 0, got {pointing_tolerance}")
    maps, boxes, grown = [], [], []
    wanted = {int(k) for k in class_ids}
    for i, r in enumerate(records):
        for k in sorted({b.label for b in r.boxes if not b.is_concept} & wanted):
            pairs = [
                (b, g)
                for b, g in zip(
                    scaled_boxes(r, k, image_size),
                    scaled_boxes(r, k, image_size, pointing_tolerance),
                    strict=True,
                )
                if b[2] > 0 and b[3] > 0
            ]
            if not pairs:
                continue
            m = np.asarray(class_maps[i, :, :, k], np.float32)
            maps.append(upsample_map(m, (image_size, image_size), grid=grid))
            boxes.append([b for b, _ in pairs])
            grown.append([g for _, g in pairs])
    if not maps:
        return {}
    stacked = np.stack(maps)
    return {
        "pointing_game": float(pointing_hits(stacked, grown).mean()),
        "pointing_game_strict": float(pointing_hits(stacked, boxes).mean()),
        "loc_iou": float(map_ious(stacked, boxes, threshold_frac, mode=mode).mean()),
        "loc_count": float(len(maps)),
    }

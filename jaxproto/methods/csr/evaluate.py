"""CSR evaluation (specs/csr.md §8): task macro-F1 on arg-max, concept F1, pointing game on concept
boxes (Zhang et al. at image resolution with a pixel tolerance, and R2's feature-grid variant),
number of prototypes and explanations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from sklearn.metrics import f1_score

from jaxproto.data.records import Box, Record


def scaled_boxes(record: Record, image_size: int) -> list[Box]:
    """The record's concept boxes in network-input pixels (image_size × image_size)."""
    if record.size is None:
        sx = sy = 1.0
    else:
        w, h = record.size
        sx, sy = image_size / float(w), image_size / float(h)
    return [
        Box(b.label, b.x * sx, b.y * sy, b.w * sx, b.h * sy, True)
        for b in record.boxes
        if b.is_concept
    ]


def box_to_grid(box: Box, grid_hw: tuple[int, int], img_hw: tuple[int, int]) -> tuple[int, ...]:
    """Cells (r0, r1, c0, c1) (end exclusive) a box touches: floor start, ceil end, clamped
    (spec §4.1); a cell counts if the box overlaps it at all."""
    gh, gw = grid_hw
    ih, iw = img_hw
    c0 = min(max(math.floor(box.x * gw / iw), 0), gw - 1)
    c1 = min(max(math.ceil((box.x + box.w) * gw / iw), c0 + 1), gw)
    r0 = min(max(math.floor(box.y * gh / ih), 0), gh - 1)
    r1 = min(max(math.ceil((box.y + box.h) * gh / ih), r0 + 1), gh)
    return r0, r1, c0, c1


def upsample(map_hw: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres (= torch ``align_corners=False``)."""
    return cv2.resize(np.asarray(map_hw, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def point_hits_box(point_xy: tuple[float, float], box: Box, tolerance_px: float) -> bool:
    """True if the point lies within ``tolerance_px`` (Euclidean) of the box."""
    x, y = point_xy
    dx = max(box.x - x, 0.0, x - (box.x + box.w))
    dy = max(box.y - y, 0.0, y - (box.y + box.h))
    return dx * dx + dy * dy <= tolerance_px * tolerance_px


def pointing_game(
    concept_maps: np.ndarray,
    records: Sequence[Record],
    image_size: int,
    tolerance_px: float = 15.0,
) -> dict[str, float]:
    """Pointing game over every (image, concept) with a box of that concept.

    ``concept_maps`` (N, K, h, w): the explanation map of each concept. ``pointing_game``: arg-max
    of the map upsampled to the input size, hit if within ``tolerance_px`` of a box of that concept
    (Zhang et al.); ``pointing_game_grid``: arg-max on the raw grid, hit if its cell is touched by a
    box (R2, no tolerance).
    """
    hits = hits_grid = total = 0
    n, _, gh, gw = concept_maps.shape
    for i, record in enumerate(records):
        by_concept: dict[int, list[Box]] = {}
        for b in scaled_boxes(record, image_size):
            by_concept.setdefault(b.label, []).append(b)
        for k, boxes in by_concept.items():
            if k >= concept_maps.shape[1]:
                raise ValueError(
                    f"record {record.image_id!r}: concept box label {k} but only "
                    f"{concept_maps.shape[1]} concepts"
                )
            total += 1
            up = upsample(concept_maps[i, k], image_size)
            r, c = np.unravel_index(int(np.argmax(up)), up.shape)
            hits += any(point_hits_box((c + 0.5, r + 0.5), b, tolerance_px) for b in boxes)
            gr, gc = np.unravel_index(int(np.argmax(concept_maps[i, k])), (gh, gw))
            for b in boxes:
                r0, r1, c0, c1 = box_to_grid(b, (gh, gw), (image_size, image_size))
                if r0 <= gr < r1 and c0 <= gc < c1:
                    hits_grid += 1
                    break
    if total == 0:
        return {"pointing_count": 0}
    return {
        "pointing_game": hits / total,
        "pointing_game_grid": hits_grid / total,
        "pointing_count": total,
        "pointing_tolerance_px": float(tolerance_px),
    }


def evaluate_csr(
    predictions: dict[str, np.ndarray],
    records: Sequence[Record],
    class_names: Sequence[str],
    concept_names: Sequence[str],
    image_size: int,
    tolerance_px: float = 15.0,
) -> dict:
    """All CSR metrics from stacked predictions (see ``method.predict_outputs``) for ``records``."""
    from jaxproto.methods.csr.method import concepts_of, target_of

    y = np.array([target_of(r) for r in records])
    pred = np.argmax(predictions["logits"], axis=-1)
    labels = list(range(len(class_names)))
    out: dict = {
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(np.mean(pred == y)),
    }
    per_class = f1_score(y, pred, labels=labels, average=None, zero_division=0)
    out.update({f"f1/{name}": float(v) for name, v in zip(class_names, per_class, strict=True)})
    k = len(concept_names)
    c_true = np.stack([concepts_of(r, k) for r in records]) > 0.5
    c_pred = predictions["concept_probs"] > 0.5
    out["concept_f1"] = float(f1_score(c_true, c_pred, average="macro", zero_division=0))
    out.update(pointing_game(predictions["concept_maps"], records, image_size, tolerance_px))
    out["num_prototypes"] = int(predictions["alive_prototypes"][0])
    out["num_explanations"] = k
    return out

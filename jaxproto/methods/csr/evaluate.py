"""CSR evaluation (specs/csr.md §8): task macro-F1 on arg-max, concept F1, pointing game on concept
boxes (Zhang et al. at image resolution with a Euclidean pixel tolerance, and R2's feature-grid
variant), number of prototypes and explanations. The pointing game itself is
``jaxproto.core.metrics.pointing_hits`` (shared with CIPL)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from sklearn.metrics import f1_score

from jaxproto.core.metrics import box_to_grid, pointing_hits
from jaxproto.data.records import Box, Record
from jaxproto.methods.csr.data import concepts_of, target_of


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


def upsample(map_hw: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres (= torch ``align_corners=False``)."""
    return cv2.resize(np.asarray(map_hw, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


def pointing_game(
    concept_maps: np.ndarray,
    records: Sequence[Record],
    image_size: int,
    tolerance_px: float = 15.0,
) -> dict[str, float]:
    """Pointing game over every (image, concept) with a box of that concept.

    ``concept_maps`` (N, K, h, w): the explanation map of each concept. ``pointing_game``: arg-max
    of the map upsampled to the input size, hit if within ``tolerance_px`` (Euclidean) of a box of
    that concept (Zhang et al.); ``pointing_game_grid``: arg-max on the raw grid, hit if its cell
    is touched by a box (R2, no tolerance; a box always touches at least one cell).
    """
    hits = hits_grid = total = 0
    n, k_count, gh, gw = concept_maps.shape
    for i, record in enumerate(records):
        by_concept: dict[int, list[tuple[float, ...]]] = {}
        for b in scaled_boxes(record, image_size):
            if b.label >= k_count:
                raise ValueError(
                    f"record {record.image_id!r}: concept box label {b.label} but only "
                    f"{k_count} concepts"
                )
            by_concept.setdefault(b.label, []).append((b.x, b.y, b.w, b.h))
        if not by_concept:
            continue
        ks = sorted(by_concept)
        total += len(ks)
        up = np.stack([upsample(concept_maps[i, k], image_size) for k in ks])
        boxes = [by_concept[k] for k in ks]
        hits += int(pointing_hits(up, boxes, tolerance_px, tolerance_shape="disk").sum())
        cells = []
        for k in ks:
            grid_boxes = []
            for box in by_concept[k]:
                c0, c1, r0, r1 = box_to_grid(
                    box, (image_size, image_size), (gw, gh), keep_one_cell=True
                )
                grid_boxes.append((c0, r0, c1 - c0, r1 - r0))
            cells.append(grid_boxes)
        hits_grid += int(pointing_hits(concept_maps[i, ks], cells).sum())
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

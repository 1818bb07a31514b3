"""Classification and localisation metrics, in numpy, for evaluation reports.

Classification follows the original codebases: per-class ROC-AUC and its unweighted mean (CIPL
spec §6), per-class best F1 over precision-recall thresholds with the accuracy at that threshold
(CIPL §6), macro-F1 on arg-max predictions (CSR spec §8). Localisation implements the pointing game
of Zhang et al. (optional pixel tolerance) and the grid variant (CSR spec §8), plus the IoU of a
thresholded map with the ground-truth boxes.

Boxes are ``(x, y, w, h)`` with (x, y) the top-left corner, in the coordinates of the map they are
compared with. Pixel (row i, column j) covers ``[j, j+1) x [i, i+1)``; it is inside a box when its
centre ``(j + 0.5, i + 0.5)`` is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

BoxLike = Sequence[float]


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C], got shape {a.shape}")
    return a


def _check_binary(name: str, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"{name} must hold only 0/1 labels, found values {bad.tolist()}")
    return y.astype(np.int64)


def _check_finite(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with tied values given the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC via the Mann-Whitney U statistic (ties count one half); None if one class only."""
    y = _check_binary("y_true", y_true).ravel()
    s = _check_finite("score", score).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and score {s.shape} must have the same length")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_class_auc(
    y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """Per-class ROC-AUC and the unweighted mean over classes where it is defined.

    A class whose labels take a single value has no AUC: it maps to None, is left out of the mean
    and is logged. ``mean_auc`` is NaN when no class has an AUC.
    """
    y = _as_2d("y_true", y_true)
    s = _as_2d("scores", scores)
    if y.shape != s.shape or y.shape[1] != len(class_names):
        raise ValueError(
            f"y_true {y.shape}, scores {s.shape} and {len(class_names)} class names disagree"
        )
    aucs: dict[str, float | None] = {}
    for k, name in enumerate(class_names):
        aucs[name] = binary_auc(y[:, k], s[:, k])
        if aucs[name] is None:
            log.warning("class %r has only one label value in y_true; AUC undefined", name)
    defined = [v for v in aucs.values() if v is not None]
    return {"auc": aucs, "mean_auc": float(np.mean(defined)) if defined else math.nan}


def best_threshold_f1(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """Best F1 over the precision-recall thresholds, that threshold, and accuracy there.

    The candidate thresholds are the distinct score values (as sklearn's
    ``precision_recall_curve``); a sample is predicted positive when ``score >= threshold``.
    Among equal F1 values the lowest threshold wins (first arg-max of the ascending curve, as the
    CIPL evaluation does). Raises ValueError when ``y_true`` has no positive.
    """
    y = _check_binary("y_true", y_true).ravel()
    s = _check_finite("score", score).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"y_true {y.shape} and score {s.shape} must be equal, non-empty")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("best_threshold_f1 needs at least one positive label (recall undefined)")
    order = np.argsort(-s, kind="mergesort")
    s_desc, y_desc = s[order], y[order]
    # Last index of each run of equal scores: predicting positive for score >= s_desc[i].
    last = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[last]
    fp = (last + 1) - tp
    f1 = 2.0 * tp / (tp + fp + n_pos)
    # Thresholds run descending here; the lowest-threshold maximum is the last maximum.
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))
    threshold = float(s_desc[last[best]])
    accuracy = float(np.mean((s >= threshold).astype(np.int64) == y))
    return float(f1[best]), threshold, accuracy


def f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Binary F1 = 2 TP / (2 TP + FP + FN) of boolean predictions (0 when there is no positive
    label or prediction, as sklearn's ``zero_division=0``)."""
    y, p = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp, fp, fn = int(np.sum(y & p)), int(np.sum(~y & p)), int(np.sum(y & ~p))
    return 2.0 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def classification_report(
    y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """Per-class AUC, best F1, its threshold and accuracy, with means over defined classes.

    JSON-serialisable: undefined values (AUC of a single-valued class, F1 of a class without
    positives) are None and left out of the means; a mean with nothing to average is None.
    """
    y = _as_2d("y_true", y_true)
    s = _as_2d("scores", scores)
    aucs = per_class_auc(y, s, class_names)["auc"]
    classes: dict[str, dict[str, object]] = {}
    for k, name in enumerate(class_names):
        yk = _check_binary(f"y_true[:, {k}]", y[:, k])
        row: dict[str, object] = {
            "auc": aucs[name],
            "f1": None,
            "threshold": None,
            "accuracy": None,
            "positives": int(yk.sum()),
            "negatives": int(len(yk) - yk.sum()),
        }
        if row["positives"] > 0:
            row["f1"], row["threshold"], row["accuracy"] = best_threshold_f1(yk, s[:, k])
        classes[name] = row

    def mean_of(key: str) -> float | None:
        vals = [r[key] for r in classes.values() if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "num_samples": int(y.shape[0]),
        "classes": classes,
        "mean_auc": mean_of("auc"),
        "mean_f1": mean_of("f1"),
        "mean_accuracy": mean_of("accuracy"),
    }


def _fmt(v: object, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float | np.floating):
        return f"{float(v):.{digits}f}"
    return str(v)


def format_table(report: dict[str, object]) -> str:
    """An aligned text table of a `classification_report`, with a final mean row."""
    if "classes" not in report:
        raise ValueError("format_table expects the dict returned by classification_report")
    header = ["class", "AUC", "best F1", "threshold", "acc@thr", "pos", "neg"]
    rows = [
        [
            name,
            _fmt(r["auc"]),
            _fmt(r["f1"]),
            _fmt(r["threshold"]),
            _fmt(r["accuracy"]),
            _fmt(r["positives"]),
            _fmt(r["negatives"]),
        ]
        for name, r in report["classes"].items()
    ]
    rows.append(
        [
            "mean",
            _fmt(report["mean_auc"]),
            _fmt(report["mean_f1"]),
            "",
            _fmt(report["mean_accuracy"]),
            "",
            "",
        ]
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def format_summary(result: dict[str, object]) -> str:
    """Any method's evaluation dict as text: the per-class table when it has one, then every
    other scalar metric (retrieval scores, localisation, ...) one per line."""
    parts = [format_table(result)] if "classes" in result else []
    table_keys = {"mean_auc", "mean_f1", "mean_accuracy"} if parts else set()
    scalars = [
        (k, v)
        for k, v in result.items()
        if k not in table_keys and "/" not in k and isinstance(v, int | float | np.number)
    ]
    if scalars:
        width = max(len(k) for k, _ in scalars)
        parts.append("\n".join(f"{k.ljust(width)}  {_fmt(v)}" for k, v in scalars))
    return "\n\n".join(parts)


def _boxes_of(item: object, index: int) -> np.ndarray:
    """One image's boxes as float [K, 4]; accepts one (x, y, w, h) or a sequence of them."""
    b = np.asarray(item, np.float64)
    if b.ndim == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] == 0:
        raise ValueError(
            f"boxes[{index}] must be (x, y, w, h) or a non-empty list of them, got shape {b.shape}"
        )
    if np.any(b[:, 2:] <= 0) or not np.all(np.isfinite(b)):
        raise ValueError(f"boxes[{index}] must have finite values and positive w, h: {b.tolist()}")
    return b


def _check_maps(maps: np.ndarray, boxes: Sequence[object]) -> np.ndarray:
    m = np.asarray(maps, np.float64)
    if m.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {m.shape}")
    if len(boxes) != m.shape[0]:
        raise ValueError(f"{m.shape[0]} maps but {len(boxes)} box entries")
    if not np.all(np.isfinite(m)):
        raise ValueError("maps contain NaN or infinite values")
    return m


TOLERANCE_SHAPES = ("square", "disk")


def pointing_hits(
    maps: np.ndarray,
    boxes: Sequence[object],
    tolerance_px: float = 0.0,
    tolerance_shape: str = "square",
) -> np.ndarray:
    """Per-image pointing-game hits (Zhang et al.): is the map's arg-max inside a box?

    A point within ``tolerance_px`` of a box counts as inside (Zhang et al. use 15 px at image
    resolution): ``tolerance_shape="square"`` enlarges each box by the tolerance on every side,
    ``"disk"`` takes the Euclidean distance to the box (Zhang et al.'s distance transform of the
    box mask). Ties go to the first maximum in row-major order; constant maps are logged.
    """
    if tolerance_shape not in TOLERANCE_SHAPES:
        raise ValueError(
            f"tolerance_shape must be one of {TOLERANCE_SHAPES}, got {tolerance_shape!r}"
        )
    m = _check_maps(maps, boxes)
    n, _, width = m.shape
    flat = m.reshape(n, -1)
    arg = flat.argmax(axis=1)
    if np.any(flat.max(axis=1) == flat.min(axis=1)):
        log.warning(
            "pointing game: %d constant map(s); their arg-max is pixel (0, 0)",
            int(np.sum(flat.max(axis=1) == flat.min(axis=1))),
        )
    cy = arg // width + 0.5
    cx = arg % width + 0.5
    hits = np.zeros(n, bool)
    for i in range(n):
        b = _boxes_of(boxes[i], i)
        # Distance from the point to each box along x and y (0 inside the box's extent).
        dx = np.maximum(np.maximum(b[:, 0] - cx[i], cx[i] - (b[:, 0] + b[:, 2])), 0.0)
        dy = np.maximum(np.maximum(b[:, 1] - cy[i], cy[i] - (b[:, 1] + b[:, 3])), 0.0)
        if tolerance_shape == "disk":
            inside = dx * dx + dy * dy <= tolerance_px * tolerance_px
        else:
            inside = (dx <= tolerance_px) & (dy <= tolerance_px)
        hits[i] = bool(inside.any())
    return hits


def pointing_game(
    maps: np.ndarray,
    boxes: Sequence[object],
    tolerance_px: float = 0.0,
    tolerance_shape: str = "square",
) -> float:
    """Pointing-game hit rate over images; see `pointing_hits`."""
    return float(pointing_hits(maps, boxes, tolerance_px, tolerance_shape).mean())


def box_to_grid(
    box: BoxLike,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    keep_one_cell: bool = False,
) -> tuple[int, int, int, int]:
    """Scales an image-pixel box to grid cells ``[c0, c1) x [r0, r1)`` (floor/ceil, clamped):
    a cell counts if the box overlaps it at all (CSR spec §4.1, §8, R2's grid variant).

    ``image_size`` and ``grid_size`` are (width, height). A box outside the grid gives an empty
    range; ``keep_one_cell`` instead clamps it onto the nearest border cell, so every box covers
    at least one cell.
    """
    x, y, w, h = (float(v) for v in box)
    (iw, ih), (gw, gh) = image_size, grid_size
    last_c, last_r = (gw - 1, gh - 1) if keep_one_cell else (gw, gh)
    c0 = min(max(math.floor(x * gw / iw), 0), last_c)
    r0 = min(max(math.floor(y * gh / ih), 0), last_r)
    lo_c, lo_r = (c0 + 1, r0 + 1) if keep_one_cell else (0, 0)
    c1 = min(max(math.ceil((x + w) * gw / iw), lo_c), gw)
    r1 = min(max(math.ceil((y + h) * gh / ih), lo_r), gh)
    return c0, c1, r0, r1


def box_mask(boxes: object, shape: tuple[int, int], index: int = 0) -> np.ndarray:
    """Boolean [H, W] mask of the pixels whose centres lie inside any of the boxes."""
    h, w = shape
    b = _boxes_of(boxes, index)
    cy = np.arange(h)[:, None] + 0.5
    cx = np.arange(w)[None, :] + 0.5
    mask = np.zeros((h, w), bool)
    for x, y, bw, bh in b:
        mask |= (cx >= x) & (cx < x + bw) & (cy >= y) & (cy < y + bh)
    return mask


def map_ious(
    maps: np.ndarray, boxes: Sequence[object], threshold_frac: float = 0.5, mode: str = "max"
) -> np.ndarray:
    """Per-image IoU of the thresholded map with the union of its boxes.

    ``mode="max"`` keeps pixels ``>= threshold_frac * max`` (needs a positive maximum);
    ``"minmax"`` keeps pixels ``>= min + threshold_frac * (max - min)``.
    """
    if not 0.0 <= threshold_frac <= 1.0:
        raise ValueError(f"threshold_frac must be in [0, 1], got {threshold_frac}")
    if mode not in ("max", "minmax"):
        raise ValueError(f"mode must be 'max' or 'minmax', got {mode!r}")
    m = _check_maps(maps, boxes)
    ious = np.zeros(m.shape[0])
    for i, mi in enumerate(m):
        hi, lo = mi.max(), mi.min()
        if mode == "max":
            if hi <= 0:
                raise ValueError(f"maps[{i}] has maximum {hi} <= 0; use mode='minmax'")
            thr = threshold_frac * hi
        else:
            thr = lo + threshold_frac * (hi - lo)
        pred = mi >= thr
        gt = box_mask(boxes[i], mi.shape, i)
        union = np.sum(pred | gt)
        ious[i] = np.sum(pred & gt) / union if union else 0.0
    return ious

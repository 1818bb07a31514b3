"""Metrics against scikit-learn and hand-written numpy loops."""

import json
import logging

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from jaxproto.core import metrics


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_per_class_auc_matches_sklearn_with_ties_and_undefined_class(caplog):
    rng = _rng()
    y = (rng.random((60, 4)) < 0.4).astype(np.float32)
    s = np.round(rng.random((60, 4)) + 0.5 * y, 1)  # rounding creates ties
    y[:, 2] = 0.0  # single-valued class: no AUC
    with caplog.at_level(logging.WARNING):
        out = metrics.per_class_auc(y, s, ["a", "b", "c", "d"])
    assert out["auc"]["c"] is None
    assert "'c'" in caplog.text
    want = {k: roc_auc_score(y[:, i], s[:, i]) for i, k in enumerate("abcd") if k != "c"}
    for k, v in want.items():
        assert out["auc"][k] == pytest.approx(v, abs=1e-12)
    assert out["mean_auc"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)


def test_per_class_auc_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError, match="class names"):
        metrics.per_class_auc(np.zeros((3, 2)), np.zeros((3, 2)), ["a"])
    with pytest.raises(ValueError, match="0/1"):
        metrics.per_class_auc(np.full((3, 1), 2.0), np.zeros((3, 1)), ["a"])
    with pytest.raises(ValueError, match="NaN"):
        metrics.per_class_auc(np.eye(2)[:, :1], np.array([[np.nan], [0.0]]), ["a"])


def _sklearn_best_f1(y, s):
    p, r, t = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)[:-1]  # last point has no threshold
    i = int(np.argmax(f1))
    return f1[i], t[i], np.mean((s >= t[i]) == y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_threshold_f1_matches_precision_recall_curve(seed):
    rng = _rng(seed)
    y = (rng.random(80) < 0.3).astype(int)
    s = np.round(rng.random(80) + 0.4 * y, 2)
    f1, thr, acc = metrics.best_threshold_f1(y, s)
    want_f1, want_thr, want_acc = _sklearn_best_f1(y, s)
    assert f1 == pytest.approx(want_f1, abs=1e-12)
    assert thr == pytest.approx(want_thr)
    assert acc == pytest.approx(want_acc)
    assert f1 == pytest.approx(f1_score(y, s >= thr))


def test_best_threshold_f1_ties_pick_lowest_threshold_and_no_positive_raises():
    # Thresholds 0.9 and 0.1 both give F1 = 2/3 (1 of 2 positives vs 2 of 2 with 2 FP).
    y = np.array([1, 0, 0, 1])
    s = np.array([0.9, 0.5, 0.5, 0.1])
    f1, thr, acc = metrics.best_threshold_f1(y, s)
    assert f1 == pytest.approx(2 / 3) and thr == pytest.approx(0.1) and acc == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        metrics.best_threshold_f1(np.zeros(4), s)


def test_classification_report_is_json_and_table_lists_classes():
    rng = _rng(3)
    y = (rng.random((40, 3)) < 0.5).astype(np.float32)
    y[:, 1] = 0.0
    s = rng.random((40, 3))
    rep = metrics.classification_report(y, s, ["Mass", "Hernia", "Nodule"])
    json.dumps(rep)
    assert rep["classes"]["Hernia"]["auc"] is None and rep["classes"]["Hernia"]["f1"] is None
    assert rep["classes"]["Mass"]["positives"] == int(y[:, 0].sum())
    f1s = [_sklearn_best_f1(y[:, k], s[:, k])[0] for k in (0, 2)]
    assert rep["mean_f1"] == pytest.approx(np.mean(f1s))
    assert rep["mean_auc"] == pytest.approx(
        np.mean([roc_auc_score(y[:, k], s[:, k]) for k in (0, 2)])
    )
    table = metrics.format_table(rep).splitlines()
    assert table[0].split()[:2] == ["class", "AUC"]
    assert [line.split()[0] for line in table[2:5]] == ["Mass", "Hernia", "Nodule"]
    assert "n/a" in table[3] and table[-1].startswith("mean")
    assert len({len(line) for line in table[:2]}) == 1  # header and rule aligned


def test_format_summary_covers_classification_and_other_metrics():
    rng = _rng(5)
    y = (rng.random((30, 2)) < 0.5).astype(float)
    rep = metrics.classification_report(y, rng.random((30, 2)), ["DR", "AMD"])
    rep["pointing_game"] = np.float32(0.75)
    text = metrics.format_summary(rep)
    assert text.startswith(metrics.format_table(rep))
    assert text.splitlines()[-1].split() == ["pointing_game", "0.7500"]
    retrieval = {"mAP": 0.9, "R@1": np.float64(1.0), "P@1": 1.0, "per_query": [0.1, 0.2]}
    retrieval["table"] = {"a": 1.0}
    lines = metrics.format_summary(retrieval).splitlines()
    assert [line.split() for line in lines] == [
        ["mAP", "0.9000"],
        ["R@1", "1.0000"],
        ["P@1", "1.0000"],
    ]


def _pointing_loop(maps, boxes, tol):
    hits = []
    for m, b in zip(maps, boxes, strict=True):
        i, j = np.unravel_index(np.argmax(m), m.shape)
        x, y, w, h = b
        hits.append(x - tol <= j + 0.5 <= x + w + tol and y - tol <= i + 0.5 <= y + h + tol)
    return np.mean(hits)


@pytest.mark.parametrize("tol", [0, 3])
def test_pointing_game_matches_loop(tol):
    rng = _rng(6)
    maps = rng.random((40, 20, 24))
    boxes = [tuple(rng.integers(0, 12, 2)) + tuple(rng.integers(1, 9, 2)) for _ in range(40)]
    assert metrics.pointing_game(maps, boxes, tol) == pytest.approx(
        _pointing_loop(maps, boxes, tol)
    )


def test_pointing_game_edges_and_multiple_boxes():
    m = np.zeros((1, 10, 10))
    m[0, 4, 7] = 1.0  # pixel centre (7.5, 4.5)
    assert metrics.pointing_game(m, [(7, 4, 1, 1)]) == 1.0
    assert metrics.pointing_game(m, [(8, 4, 2, 2)]) == 0.0
    assert metrics.pointing_game(m, [(8, 4, 2, 2)], tolerance_px=0.5) == 1.0
    assert metrics.pointing_game(m, [[(0, 0, 2, 2), (6, 3, 3, 3)]]) == 1.0
    with pytest.raises(ValueError, match="boxes\\[0\\]"):
        metrics.pointing_game(m, [(0, 0, 0, 2)])
    with pytest.raises(ValueError, match="1 maps but 2"):
        metrics.pointing_game(m, [(0, 0, 1, 1)] * 2)


def test_box_to_grid_scales_box_with_floor_ceil():
    assert metrics.box_to_grid((100, 33, 40, 10), (224, 224), (7, 7)) == (3, 5, 1, 2)
    assert metrics.box_to_grid((-10, 200, 300, 100), (224, 224), (7, 7)) == (0, 7, 6, 7)


def test_map_iou_matches_loop():
    rng = _rng(7)
    maps = rng.random((5, 12, 16))
    boxes = [(2, 3, 6, 4), (0, 0, 16, 12), (10, 5, 3, 3), (4.5, 2.5, 3, 3), (1, 1, 1, 1)]
    got = metrics.map_ious(maps, boxes, 0.6)
    for m, (x, y, w, h), g in zip(maps, boxes, got, strict=True):
        pred = m >= 0.6 * m.max()
        gt = np.zeros_like(pred)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                gt[i, j] = x <= j + 0.5 < x + w and y <= i + 0.5 < y + h
        assert g == pytest.approx((pred & gt).sum() / (pred | gt).sum())
    with pytest.raises(ValueError, match="minmax"):
        metrics.map_ious(-maps, boxes)
    lo = metrics.map_ious(-maps, boxes, 0.6, mode="minmax")
    assert lo.shape == (5,) and np.all((lo >= 0) & (lo <= 1))

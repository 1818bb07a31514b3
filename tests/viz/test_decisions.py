"""Operating thresholds: chosen per class, written as decision columns, carried by exports."""

import json
import os

import numpy as np
import pytest

from configs import baseline_odir
from jaxproto import inference
from jaxproto.core import outputs
from jaxproto.core.method import THRESHOLDS_FILE, Method
from jaxproto.data.records import DatasetIndex, Record


class _Probs(Method):
    """Only what the default CLI helpers need (the training contract is not exercised)."""

    init = optimizers = phases = train_data = loss = eval_example = predict = evaluate = None


_Probs.__abstractmethods__ = frozenset()


def _method(background=None):
    index = DatasetIndex("t", ["A", "B", "Normal"], {}, True, background)
    return _Probs(None, index)


def _best_f1_threshold(y, s):
    """Independent reference: try every distinct score as threshold (lowest wins ties)."""
    best = (-1.0, None)
    for t in sorted(set(s.tolist())):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        f1 = 2 * tp / (np.sum(pred) + np.sum(y == 1))
        if f1 > best[0] + 1e-12:
            best = (f1, t)
    return best[1]


def test_operating_thresholds_are_best_f1_per_class_and_skip_background():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (40, 3)).astype(np.float32)
    labels[:, 1] = 0  # B has no positive: no threshold
    probs = np.clip(labels[:, [0, 1]] * 0.3 + rng.random((40, 2)) * 0.7, 0, 1)
    records = [Record(f"i{i}", f"i{i}.png", labels[i]) for i in range(40)]
    m = _method(background=2)
    thr = m.operating_thresholds({outputs.PROBS: probs}, records, "val")
    assert thr["split"] == "val" and thr["num_images"] == 40 and set(thr["classes"]) == {"A"}
    assert thr["classes"]["A"] == pytest.approx(_best_f1_threshold(labels[:, 0], probs[:, 0]))
    assert m.operating_thresholds({}, records, "val") is None


def test_prediction_columns_add_decision_and_threshold_next_to_probability():
    m = _method(background=2)
    probs = np.array([[0.2, 0.9], [0.7, 0.1]])
    assert list(m.prediction_columns({outputs.PROBS: probs})) == ["A", "B"]  # no thresholds
    m.thresholds = {"split": "val", "classes": {"A": 0.5}}
    cols = m.prediction_columns({outputs.PROBS: probs})
    assert list(cols) == ["A", "A_decision", "A_threshold", "B"]
    assert cols["A_decision"].tolist() == [0, 1] and cols["A_threshold"].tolist() == [0.5, 0.5]
    rows = m.decisions({"A": 0.5, "B": 0.9})
    assert rows == [
        {"class": "A", "probability": 0.5, "threshold": 0.5, "decision": True},
        {"class": "B", "probability": 0.9, "threshold": None, "decision": None},
    ]


def test_export_carries_thresholds_under_the_checksum_and_old_exports_load(tmp_path):
    config = baseline_odir.get_config("synthetic")
    meta = {
        "name": "synthetic-odir",
        "class_names": ["A", "B"],
        "concept_names": [],
        "multilabel": True,
        "background_class": None,
    }
    state = {"params": {"w": np.ones((2,), np.float32)}, "batch_stats": {}, "extra": {}}
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / THRESHOLDS_FILE).write_text(json.dumps({"split": "val", "classes": {"A": 0.3}}))
    new, old = str(tmp_path / "new"), str(tmp_path / "old")
    inference.write_export(new, config, meta, state, workdir=str(workdir))
    inference.write_export(old, config, meta, state)
    manifest = json.load(open(os.path.join(new, "manifest.json")))
    assert manifest["extra_files"] == [THRESHOLDS_FILE]
    assert inference.read_thresholds(new) == {"split": "val", "classes": {"A": 0.3}}
    inference.read_export(new)
    inference.read_export(old)  # no thresholds: still a valid export
    assert inference.read_thresholds(old) is None
    with open(os.path.join(new, THRESHOLDS_FILE), "w") as f:
        json.dump({"split": "val", "classes": {"A": 0.0}}, f)
    with pytest.raises(inference.ExportError, match="checksum"):
        inference.read_export(new)

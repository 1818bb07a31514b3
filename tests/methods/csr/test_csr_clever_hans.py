"""Clever-Hans correction by interaction (specs/csr.md §4): a spurious marker goes with concept 0
(hence class 1) in training only; at test time it sits on class-0 images. A negative box over the
marker, or rejecting the concept it drives, must correct the predictions the model got wrong.

The default test trains all three CSR stages (CsrMethod losses and optimizers) on tiny procedural
images (``hans_model.py``); the slow one runs the real trainer on
``configs/csr_tbx11k.py:clever_hans``.
"""

import numpy as np
import pytest

from configs import csr_tbx11k
from jaxproto.methods.csr import interact
from tests.methods.csr.hans_model import MARKER, images, trained_method


def _correction_report(method, state, images, labels, boxes_neg):
    """Predictions before and after a negative box over the marker / rejecting the concept whose
    scores the marker drives (found from the drop the negative box causes)."""
    session = interact.CsrSession(method.model, state, images)
    before = session.predict()
    k = len(method.index.concept_names)
    a = session.importance([], boxes_neg, 0.2)
    boxed = session.predict(a)
    # The marker's own effect: uniform α versus α with the marker zeroed.
    uniform = session.predict(session.importance([], [], 0.2))
    drop = (uniform["scores"] - boxed["scores"]).reshape(len(images), k, -1).max(-1).mean(0)
    driven = int(np.argmax(drop))
    rejected = session.predict(rejected=np.eye(k, dtype=np.float32)[driven])
    wrong = np.argmax(before["probs"], -1) != labels

    def fixed(res):
        return float(np.mean(np.argmax(res["probs"], -1)[wrong] == labels[wrong]))

    return {
        "driven_concept": driven,
        "error_rate": float(wrong.mean()),
        "num_wrong": int(wrong.sum()),
        "fixed_by_box": fixed(boxed),
        "fixed_by_reject": fixed(rejected),
    }


def test_negative_box_and_rejection_fix_clever_hans():
    method, state = trained_method()

    # Clean test images (no marker) are classified well: the model did learn the task ...
    xc, _, yc = images(np.random.default_rng(1), 128, marker_on_class=-1)
    clean = interact.CsrSession(method.model, state, xc).predict()
    assert np.mean(np.argmax(clean["probs"], -1) == yc) > 0.8
    # ... but the marker on negative images fools it (the Clever-Hans effect exists).
    xt, _, yt = images(np.random.default_rng(2), 128, marker_on_class=0)
    neg = yt == 0
    report = _correction_report(method, state, xt[neg], yt[neg], [MARKER])
    print("clever-hans report:", report)
    assert report["driven_concept"] == 0
    assert report["error_rate"] > 0.5
    assert report["fixed_by_box"] >= 0.8
    assert report["fixed_by_reject"] >= 0.8


@pytest.mark.slow
def test_clever_hans_synthetic_tbx11k_trainer(tmp_path):
    from jaxproto.methods import build_trainer

    cfg = csr_tbx11k.get_config("clever_hans")
    trainer = build_trainer(cfg, str(tmp_path))
    state = trainer.train()
    method = trainer.method
    test = [r for r in trainer.index.split("test") if r.meta.get("hans")]
    hans_class = int(cfg.data.hans_class)
    test = [r for r in test if int(np.argmax(r.labels)) != hans_class]
    images = np.stack([method.eval_example(r)["image"] for r in test])
    labels = np.array([int(np.argmax(r.labels)) for r in test])
    side = cfg.model.image_size
    marker = (0, 0, round(0.16 * side), round(0.16 * side))
    report = _correction_report(method, state, images, labels, [marker])
    print("clever-hans report (synthetic tbx11k):", report)
    assert report["num_wrong"] > 0
    assert max(report["fixed_by_box"], report["fixed_by_reject"]) >= 0.5

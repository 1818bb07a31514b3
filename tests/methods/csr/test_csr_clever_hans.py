"""Clever-Hans correction by interaction (specs/csr.md §4): a spurious marker goes with concept 0
(hence class 1) in training only; at test time it sits on class-0 images. A negative box over the
marker, or rejecting the concept it drives, must correct the predictions the model got wrong.

The default test trains all three CSR stages (CsrMethod losses and optimizers) on tiny procedural
images; the slow one runs the real trainer on ``configs/csr_tbx11k.py:clever_hans``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import csr_tbx11k
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.methods.csr import interact
from jaxproto.methods.csr.method import CsrMethod

SIZE = 24
MARKER = (0, 0, 5, 5)  # x, y, w, h: top-left corner


class SmallBackbone(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        return {"layer3": nn.Conv(16, (3, 3), strides=2)(x)}  # 6x6 grid


def _images(rng, n, marker_on_class):
    """Concept 0 = faint red square, concept 1 = blue square; class 1 iff concept 0.
    ``marker_on_class``: the class whose images carry the bright green marker."""
    x = rng.normal(0.0, 0.05, (n, SIZE, SIZE, 3)).astype(np.float32)
    concepts = (rng.random((n, 2)) < 0.5).astype(np.float32)
    for i in range(n):
        for k, color in ((0, (0.6, 0.0, 0.0)), (1, (0.0, 0.0, 1.5))):
            if concepts[i, k]:
                r, c = rng.integers(7, SIZE - 6, 2)
                x[i, r : r + 6, c : c + 6] += np.asarray(color, np.float32)
        if int(concepts[i, 0]) == marker_on_class:
            x[i, :5, :5, 1] += 2.0
    return x, concepts, concepts[:, 0].astype(np.int32)


def _train(method, x, concepts, labels, steps, rng):
    state = method.init(jax.random.key(0))
    opts = method.optimizers(steps_per_epoch=steps // 3)
    state["opt"] = {k: tx.init(state["params"]) for k, tx in opts.items()}
    stages = {p.optimizer: p for p in method.phases()}.values()  # one phase per stage
    for phase, n in zip(stages, (steps, steps // 2, steps), strict=True):
        tx = opts[phase.optimizer]

        @jax.jit
        def step(state, batch, phase=phase, tx=tx):
            (_, (_, upd)), g = jax.value_and_grad(method.loss, has_aux=True)(
                state["params"], state, batch, jax.random.key(0), phase
            )
            u, o = tx.update(g, state["opt"][phase.optimizer], state["params"])
            return {
                **state,
                **upd,
                "params": optax.apply_updates(state["params"], u),
                "opt": {**state["opt"], phase.optimizer: o},
            }

        for _ in range(n):
            i = rng.choice(len(x), 32, replace=False)
            state = step(
                state,
                {
                    "image": jnp.asarray(x[i]),
                    "concepts": jnp.asarray(concepts[i]),
                    "label": jnp.asarray(labels[i]),
                },
            )
    return state


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
    rng = np.random.default_rng(0)
    x, concepts, labels = _images(rng, 512, marker_on_class=1)
    cfg = csr_tbx11k.get_config("synthetic")
    cfg.model.image_size = SIZE
    cfg.model.prototypes_per_concept = 4
    cfg.model.proj_dim = 16
    cfg.optim.stage1.lr, cfg.optim.stage3.lr = 3e-3, 3e-2
    recs = [
        Record(f"r{i}", "", np.eye(2, dtype=np.float32)[labels[i]], concepts=concepts[i])
        for i in range(len(x))
    ]
    index = DatasetIndex(
        "hans",
        ["negative", "positive"],
        {"train": recs},
        multilabel=False,
        concept_names=["red", "blue"],
    )
    method = CsrMethod(cfg, index, backbone=SmallBackbone())
    state = _train(method, x, concepts, labels, steps=150, rng=rng)

    # Clean test images (no marker) are classified well: the model did learn the task ...
    xc, _, yc = _images(np.random.default_rng(1), 128, marker_on_class=-1)
    clean = interact.CsrSession(method.model, state, xc).predict()
    assert np.mean(np.argmax(clean["probs"], -1) == yc) > 0.8
    # ... but the marker on negative images fools it (the Clever-Hans effect exists).
    xt, _, yt = _images(np.random.default_rng(2), 128, marker_on_class=0)
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

"""CiplMethod: schedule, optimizers, losses with the EMA teacher, projection, predict/evaluate."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxproto.common.config import load_config_file
from jaxproto.core.method import Phase
from jaxproto.data.records import Box, DatasetIndex, Record
from jaxproto.methods.cipl import config
from jaxproto.methods.cipl import method as cm
from jaxproto.methods.cipl.model import prototype_class_identity


def _config(dataset="chestxray14", arg="synthetic"):
    return config.get_config(dataset, arg)


def _tiny_config():
    c = _config()
    c.model.image_size = 64
    c.model.prototypes_per_class = 2
    c.model.proto_dim = 8
    return c


def _index(num_classes=4, n=6, bg=3):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        y = (rng.random(num_classes) < 0.4).astype(np.float32)
        if not y.any():
            y[bg] = 1.0
        boxes = (Box(label=0, x=0, y=0, w=20, h=20),) if y[0] else ()
        recs.append(Record(f"r{i}", f"synthetic://x/{i}", y, boxes=boxes, size=(64, 64)))
    names = [f"c{k}" for k in range(num_classes)]
    return DatasetIndex("tiny", names, {"train": recs, "test": recs}, background_class=bg)


def test_official_schedule():
    c = _config(arg="")
    m = cm.CiplMethod(c, _index(num_classes=15, bg=14))  # builds the modules, no weights
    phases = m.phases()
    got = [(p.name, p.optimizer, p.loss, p.data, p.epochs) for p in phases]
    assert got == [
        ("warmup", "joint", "warmup", "single", 15),
        ("main", "joint", "main", "pairs", 21),
        ("last_layer@35", "last", "main", "pairs", 6),
        ("main", "joint", "main", "pairs", 5),
        ("last_layer@40", "last", "main", "pairs", 6),
    ]
    assert phases[1].before == (cm.init_ema_hook,) and phases[3].before == ()
    assert len(phases[1].after) == 1 and len(phases[3].after) == 1
    assert phases[2].post_update == m.project_last_layer == phases[4].post_update
    assert [p.trainable for p in phases] == [cm.TRAINABLE[p.optimizer] for p in phases]
    c.train.push_epochs = [3]
    with pytest.raises(ValueError, match="push_epochs"):
        m.phases()


def test_lr_table():
    # cipl.md §3.2: halvings at the start of epochs 10, 20, 25, 30, 35.
    sched = cm.halving_schedule(1e-4, [10, 20, 25, 30, 35], 0.5, steps_per_epoch=7)
    table = {
        0: 1e-4,
        9: 1e-4,
        10: 5e-5,
        19: 5e-5,
        20: 2.5e-5,
        25: 1.25e-5,
        30: 6.25e-6,
        35: 3.125e-6,
        40: 3.125e-6,
    }
    for epoch, lr in table.items():
        np.testing.assert_allclose(sched(epoch * 7), lr, rtol=1e-6)
        np.testing.assert_allclose(sched(epoch * 7 + 6), lr, rtol=1e-6)


@pytest.fixture(scope="module")
def setup():
    c = _tiny_config()
    index = _index()
    method = cm.CiplMethod(c, index)
    state = jax.jit(method.init)(jax.random.key(0))
    return method, state


def test_init_and_param_groups(setup):
    method, state = setup
    p = state["params"]
    assert p["prototype_vectors"].shape == (8, 8)
    np.testing.assert_array_equal(p["last_layer"]["kernel"], prototype_class_identity(4, 2))
    assert float(p["prototype_vectors"].min()) >= 0 and float(p["prototype_vectors"].max()) < 1
    labels = cm.param_labels(p, cm.TRAINABLE["joint"])
    assert set(jax.tree.leaves(labels)) == {"backbone", "add_on", "prototypes", "frozen"}
    assert labels["last_layer"]["kernel"] == labels["pretrain_classifier"]["kernel"] == "frozen"
    with pytest.raises(ValueError, match="bogus"):
        cm.param_labels({**p, "bogus": jnp.zeros(1)}, cm.TRAINABLE["joint"])
    # one optimizer step of each: joint never touches the last layer, last touches only it
    opts = method.optimizers(steps_per_epoch=3)
    grads = jax.tree.map(jnp.ones_like, p)
    untouched = {
        "joint": {"last_layer", "pretrain_classifier"},
        "last": set(p) - {"last_layer"},
        "pretrain": {"prototype_vectors", "add_on_0", "add_on_1", "last_layer"},
    }
    changes = [("joint", "prototype_vectors"), ("last", "last_layer")]
    for name, changed in [*changes, ("pretrain", "pretrain_classifier")]:
        step = jax.jit(
            lambda g, p, tx=opts[name]: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0])
        )
        new = step(grads, p)
        for key in p:
            moved = any(
                bool(jnp.any(a != b))
                for a, b in zip(jax.tree.leaves(new[key]), jax.tree.leaves(p[key]), strict=False)
            )
            if key == changed:
                assert moved, (name, key)
            if key in untouched[name]:
                assert not moved, (name, key)


def _batch(n=2, size=64, seed=1):
    rng = np.random.default_rng(seed)
    ya = np.array([[1, 0, 0, 0], [0, 1, 0, 1]], np.float32)[:n]
    yb = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], np.float32)[:n]
    x = lambda: rng.normal(size=(n, size, size, 3)).astype(np.float32)  # noqa: E731
    return {
        "image_a": x(),
        "image_b": x(),
        "view_a": x(),
        "view_b": x(),
        "labels_a": ya,
        "labels_b": yb,
    }


def test_main_loss_ema_and_terms(setup):
    method, state = setup
    state = cm.init_ema_hook(None, {**state, "params": state["params"]})
    # make the teacher differ from the student so the EMA update is visible
    state["extra"]["ema_params"] = jax.tree.map(lambda x: x * 0.5, state["extra"]["ema_params"])
    phase = Phase("main", "joint", loss="main", data="pairs")
    batch = _batch()
    fn = jax.jit(
        lambda p, s, b: jax.value_and_grad(method.loss, has_aux=True)(
            p, s, b, jax.random.key(0), phase
        )
    )
    (loss, (metrics, upd)), grads = fn(state["params"], state, batch)
    assert np.isfinite(float(loss))
    assert set(metrics) == {"ce", "cluster", "separation", "co_ce", "align_int", "align_pred"}
    m = method.config.model.ema_momentum
    want = jax.tree.map(
        lambda e, p: m * e + (1 - m) * p, state["extra"]["ema_params"], state["params"]
    )
    for a, b in zip(
        jax.tree.leaves(upd["extra"]["ema_params"]), jax.tree.leaves(want), strict=False
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # teacher BN stats were updated by its own train-mode forward, student's twice (split)
    assert any(
        bool(jnp.any(a != b))
        for a, b in zip(
            jax.tree.leaves(upd["extra"]["ema_batch_stats"]),
            jax.tree.leaves(state["extra"]["ema_batch_stats"]),
            strict=False,
        )
    )
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # co-attention / alignment terms depend on the pair; total is their weighted sum
    c = method.config.loss
    total = (
        c.crs_ent * metrics["ce"]
        + c.clst * metrics["cluster"]
        + c.sep * max(0.0, c.sep_margin - float(metrics["separation"]))
        + c.cross_att * metrics["co_ce"]
        + c.inte_align * metrics["align_int"]
        + c.pred_align * metrics["align_pred"]
    )
    np.testing.assert_allclose(loss, total, rtol=1e-5)


def test_student_bn_split_threads_stats(setup):
    """Main loss: the student's BN statistics are updated by image_a's forward, then
    image_b's (as two warm-up forwards in a row), unless model.student_bn_split is off."""
    method, state = setup
    x = _batch()
    key = jax.random.key(0)
    warm = Phase("warmup", "joint", loss="warmup", data="single")
    main = Phase("main", "joint", loss="main", data="pairs")

    def stats(phase, s, batch):
        return jax.jit(lambda p, s, b: method.loss(p, s, b, key, phase)[1][1]["batch_stats"])(
            s["params"], s, batch
        )

    split = stats(main, state, x)
    first = stats(warm, state, {"image": x["image_a"], "labels": x["labels_a"]})
    second = stats(
        warm, {**state, "batch_stats": first}, {"image": x["image_b"], "labels": x["labels_b"]}
    )
    for u, v in zip(jax.tree.leaves(split), jax.tree.leaves(second), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)
    method.config.model.student_bn_split = False
    try:
        joint = stats(main, state, x)  # a fresh trace: the flag is read at trace time
    finally:
        method.config.model.student_bn_split = True
    assert any(
        not np.allclose(u, v)
        for u, v in zip(jax.tree.leaves(joint), jax.tree.leaves(split), strict=True)
    )


def test_pretrain_phase_and_loss(setup):
    """In-domain pretraining: BCE of a GAP linear head on the backbone's last map (layer4)."""
    method, state = setup
    assert method.phases()[0] == Phase(
        "pretrain",
        "pretrain",
        trainable=cm.TRAINABLE["pretrain"],
        loss="pretrain",
        data="single",
        epochs=3,
    )
    b = _batch()
    batch = {"image": b["image_a"], "labels": b["labels_a"]}
    phase = method.phases()[0]
    loss, (metrics, upd) = method.loss(state["params"], state, batch, jax.random.key(0), phase)
    feats = method.model.backbone.apply(
        {"params": state["params"]["backbone"], "batch_stats": state["batch_stats"]["backbone"]},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
    )[0]["layer4"]
    head = state["params"]["pretrain_classifier"]
    z = np.maximum(np.asarray(feats), 0).mean(axis=(1, 2)) @ np.asarray(head["kernel"])
    z = z + np.asarray(head["bias"])
    y = batch["labels"]
    want = np.mean(np.logaddexp(0, z) - y * z)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert set(upd) == {"batch_stats"} and float(metrics["pretrain_bce"]) == float(loss)


def test_warmup_loss_uses_all_foreground(setup):
    method, state = setup
    phase = Phase("warmup", "joint", loss="warmup", data="single")
    b = _batch()
    batch = {"image": b["image_a"], "labels": b["labels_a"]}
    loss, (metrics, upd) = method.loss(state["params"], state, batch, jax.random.key(0), phase)
    assert np.isfinite(float(loss)) and set(upd) == {"batch_stats"}
    assert list(method.fg_eval) == [0, 1, 2] and list(method.fg_main) == [0, 1]
    with pytest.raises(ValueError, match="loss variant"):
        method.loss(
            state["params"], state, batch, jax.random.key(0), Phase("x", "joint", loss="bogus")
        )


def test_last_layer_projection(setup):
    method, state = setup
    k = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    s = {**state, "params": {**state["params"], "last_layer": {"kernel": jnp.asarray(k)}}}
    got = np.asarray(method.project_last_layer(s)["params"]["last_layer"]["kernel"])
    ident = prototype_class_identity(4, 2)
    np.testing.assert_array_equal(got, np.where(ident > 0, np.maximum(k, 0), 0))


def test_predict_and_evaluate(setup, monkeypatch):
    method, state = setup
    index = method.index
    images = np.random.default_rng(3).normal(size=(6, 64, 64, 3)).astype(np.float32)
    out = jax.jit(method.predict)(state, {"image": images})
    z = np.asarray(out["logits"])
    np.testing.assert_allclose(out["probs"], 1 / (1 + np.exp(-(z[:, :3] - z[:, 3:]))), rtol=1e-5)
    assert out["class_maps"].shape == (6, 4, 4, 4)  # resnet_tiny layer3: stride 16 at 64 px
    preds = jax.tree.map(np.asarray, out)
    n_boxed = sum(1 for r in index.split("test") if r.boxes)
    # Class-0 boxes are (0, 0, 20, 20); cell (i, i) looks at pixel 16 i + 0.5 (ResNet tap).
    # Expected (pointing within 15 px, strictly inside) per peak cell: by hand.
    for cell, want in ((1, (1.0, 1.0)), (2, (1.0, 0.0)), (3, (0.0, 0.0))):
        maps = np.full((6, 4, 4, 4), 0.1, np.float32)
        maps[:, cell, cell, 0] = 1.0
        res = method.evaluate({**preds, "class_maps": maps}, index.split("test"))
        assert (res["pointing_game"], res["pointing_game_strict"]) == want, cell
        assert res["loc_count"] == n_boxed
    assert 0.0 <= res["mean_auc"] <= 1.0 and "auc/c0" in res and "auc/c3" not in res
    # Stretched like cv2.resize, cell 2 is drawn at pixel 40: out of the 15 px margin.
    monkeypatch.setattr(method, "grid", None)
    maps = np.full((6, 4, 4, 4), 0.1, np.float32)
    maps[:, 2, 2, 0] = 1.0
    assert (
        method.evaluate({**preds, "class_maps": maps}, index.split("test"))["pointing_game"] == 0.0
    )


def test_feature_grid_modes():
    c = _config()
    assert cm.feature_grid(c) == (16.0, 0.5)
    c.model.backbone, c.model.tap = "densenet121", ""
    assert cm.feature_grid(c) == (32.0, 14.5)
    c.localization.grid = "stretch"
    assert cm.feature_grid(c) is None
    c.localization.grid = "bogus"
    with pytest.raises(ValueError, match="localization.grid"):
        cm.feature_grid(c)


def test_index_without_background_is_rejected():
    idx = _index()
    idx.background_class = None
    with pytest.raises(ValueError, match="background"):
        cm.CiplMethod(_tiny_config(), idx)


def test_config_variants():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    for name in ("chestxray14", "odir"):
        for arg in ("", "synthetic"):
            c = _config(name, arg)
            assert isinstance(c, ml_collections.ConfigDict) and c.method == "cipl"
            thin = load_config_file(os.path.join(root, "configs", f"cipl_{name}.py:{arg}"))
            assert thin.to_dict() == c.to_dict()
    assert _config("odir", "").model.image_size == 640
    assert _config("odir", "synthetic").model.image_size == 128
    assert len(_config("chestxray14", "").data.class_weights) == 15
    with pytest.raises(ValueError, match="dataset"):
        config.get_config("mnist", None)

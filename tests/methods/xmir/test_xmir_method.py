"""XmirMethod on a tiny synthetic ISIC-like dataset: PK batches, loss, predict, evaluate,
anomaly subset, saliency maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import xmir_isic
from jaxproto.data.synthetic import synthetic_index
from jaxproto.methods.xmir.data import class_labels
from jaxproto.methods.xmir.losses import batch_all_triplet_loss
from jaxproto.methods.xmir.method import XmirMethod


def _setup(extra=""):
    cfg = xmir_isic.get_config("synthetic,runlocal,image_size=32" + extra)
    index = synthetic_index(cfg.data)
    return cfg, index, XmirMethod(cfg, index)


@pytest.fixture(scope="module")
def tiny():
    cfg, index, method = _setup()
    return cfg, index, method, method.init(jax.random.key(0))


def _batch(method, sampler, example_fn, epoch=0):
    rows = sampler.epoch(epoch)[: method.P * method.K]
    ex = [example_fn(i, np.random.default_rng(int(i))) for i in rows]
    return rows, {k: jnp.asarray(np.stack([e[k] for e in ex])) for k in ex[0]}


def test_pk_batches_loss_and_predict(tiny):
    cfg, index, method, state = tiny
    records = index.split("train")
    labels = class_labels(records)
    phase = method.phases()[0]
    sampler, example_fn = method.train_data(phase, records)
    assert len(sampler) % (method.P * method.K) == 0
    rows, batch = _batch(method, sampler, example_fn)
    counts = np.bincount(labels[rows], minlength=3)
    assert sorted(counts) == [method.K] * 3  # P = 3 classes x K images each
    np.testing.assert_array_equal(np.asarray(batch["label"]), labels[rows])

    @jax.jit
    def run(params):
        loss, (metrics, upd) = method.loss(params, state, batch, None, phase)
        variables = {"params": params, "batch_stats": state["batch_stats"]}
        train_emb = method.net.apply(
            variables, batch["image"], train=True, mutable=["batch_stats"]
        )[0]
        return loss, metrics, upd, train_emb, method.predict(state, batch)["embedding"]

    loss, metrics, upd, train_emb, emb = run(state["params"])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, atol=1e-5)
    assert np.isfinite(float(loss)) and "batch_stats" in upd
    ref, frac = batch_all_triplet_loss(train_emb, batch["label"], 0.2)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert float(metrics["frac_positive_triplets"]) == pytest.approx(float(frac))
    # one PK epoch = steps until the smallest class runs out (spec §2.2)
    assert phase.steps == int(round(cfg.train.epochs * (np.bincount(labels).min() // method.K)))


def test_evaluate_keys(tiny):
    cfg, index, method, _ = tiny
    records = index.split("test")[:20]
    emb = np.eye(3, 4)[class_labels(records)] + 0.01
    out = method.evaluate({"embedding": emb.astype(np.float32)}, records)
    assert out["R@1"] == 1.0 and out["mAP"] < 1.0  # self counted at the last rank
    assert set(out) == {"R@1", "P@1", "R@5", "P@5", "R@10", "P@10", "mAP", "MAP@R"}


def test_anomaly_variant_leaves_class_out():
    cfg, index, method = _setup(",anomaly")
    assert method.P == 2 and cfg.train.batch_size == 8
    records = index.split("train")
    labels = class_labels(records)
    sampler, _ = method.train_data(method.phases()[0], records)
    rows = sampler.epoch(1)
    mel = index.class_names.index("melanoma")
    assert set(np.unique(labels[rows])) == set(range(3)) - {mel}


def test_batch_size_mismatch_is_an_error():
    cfg = xmir_isic.get_config("synthetic,runlocal,image_size=32")
    cfg.train.batch_size = 10
    with pytest.raises(ValueError, match="batch_size=10"):
        XmirMethod(cfg, synthetic_index(cfg.data))


@pytest.mark.slow  # three densenet_tiny compiles (~15 s idle, > 60 s on a loaded machine)
def test_saliency_maps_shapes(tiny):
    cfg, index, method, state = tiny
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    recs = index.split("test")[:2]
    q, r = (jnp.asarray(method.eval_example(x)["image"]) for x in recs)
    maps = method.saliency_maps(variables, q, r, sbsm_window=16, sbsm_stride=16, chunk_size=4)
    assert set(maps) == {"sbsm", "simatt", "simcam"}
    for m in maps.values():
        assert m.shape == (32, 32) and np.all(np.isfinite(m)) and m.min() >= 0
    with pytest.raises(ValueError, match="unknown saliency"):
        method.saliency_maps(variables, q, r, ("gradcam",))


@pytest.mark.parametrize("module", ["xmir_isic", "xmir_covidx"])
def test_configs_build_methods(module):
    import importlib

    get_config = importlib.import_module(f"configs.{module}").get_config
    full = get_config()
    assert full.train.batch_size == 48 and full.model.backbone == "densenet121"
    assert full.model.embedding_dim == (256 if module == "xmir_isic" else 0)
    assert full.optim.lr == 1e-4 and full.loss.margin == 0.2 and full.train.epochs == 20
    synthetic = get_config("synthetic")
    assert synthetic.data.num_train == (3000 if module == "xmir_isic" else 600)
    assert synthetic.data.num_test == 270 and synthetic.train.epochs == 12
    cfg = get_config("synthetic,runlocal,anomaly,image_size=32")
    method = XmirMethod(cfg, synthetic_index(cfg.data))
    assert method.P == 2 and method.index.class_names[method.anomaly_class] in (
        "melanoma",
        "COVID-19",
    )
    with pytest.raises(ValueError, match="unknown config argument"):
        get_config("synthtic")


def test_what_the_clis_need(tiny, tmp_path):
    from jaxproto.common.errors import UserError
    from jaxproto.core import outputs
    from jaxproto.core.method import ExplainRequest

    cfg, index, method, state = tiny
    emb = np.eye(3, 4, dtype=np.float32)
    preds = {outputs.EMBEDDING: emb}
    assert method.prediction_columns(preds) == {}
    np.testing.assert_array_equal(method.prediction_arrays(preds)["embeddings"], emb)
    with pytest.raises(UserError, match="retrieve query --index INDEX --image x.png"):
        method.explain(state, ExplainRequest(image="x.png", out_dir=str(tmp_path), source="e"))
    text = method.summarize({"R@1": 1.0, "P@1": 0.5, "mAP": 0.25, "MAP@R": 0.125})
    assert "R@1    1.0000  (share of queries" in text
    assert "mAP    0.2500  (trapezoid AP; the query counts at the last rank)" in text

"""CSR interaction (specs/csr.md §4): importance map on a 7×7 grid, cached re-prediction (backbone
runs once per image), rejection and pruning, against independent numpy computations."""

import json

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import csr_tbx11k
from jaxproto.core.method import ExplainRequest
from jaxproto.data.records import Box, DatasetIndex, Record
from jaxproto.methods.csr import interact
from jaxproto.methods.csr.method import CsrMethod
from jaxproto.methods.csr.model import CsrModel

CALLS = {"backbone": 0}


def _count(_):
    CALLS["backbone"] += 1


class CountingBackbone(nn.Module):
    """Tiny conv backbone that counts its executions (also under jit) via a debug callback."""

    @nn.compact
    def __call__(self, x, train=False):
        jax.debug.callback(_count, x.shape[0])
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
        return {"stage4": nn.Conv(8, (3, 3), strides=2)(x)}


def test_importance_map_on_7x7_grid():
    # 224 px image, 32 px cells: box x 40..100 touches columns floor(40/32)=1 .. ceil(100/32)=4.
    a = interact.importance_map(
        [(40, 0, 60, 10)], [(0, 0, 224, 64), (200, 200, 24, 24)], 0.2, (7, 7), (224, 224)
    )
    want = np.full((7, 7), 0.2, np.float32)
    want[0:2, :] = 0.0  # negative rows 0..ceil(64/32)=2
    want[6:7, 6:7] = 0.0  # 200..224 -> cell 6
    want[0:1, 1:4] = 1.0  # positive overrides negative
    np.testing.assert_array_equal(a, want)
    # A box inside one cell touches only that cell; Box objects work too.
    b = interact.importance_map([Box(0, 33, 65, 2, 2)], [], 0.0, (7, 7), (224, 224))
    assert b.sum() == 1.0 and b[2, 1] == 1.0
    with pytest.raises(ValueError, match="alpha"):
        interact.importance_map([], [], 1.0, (7, 7), (224, 224))
    with pytest.raises(ValueError, match="non-positive"):
        interact.importance_map([(0, 0, 0, 5)], [], 0.2, (7, 7), (224, 224))


def test_rejection_vector_and_indecision():
    names = ["a", "b", "c"]
    np.testing.assert_array_equal(interact.rejection_vector(["b", 2], names), [0, 1, 1])
    with pytest.raises(ValueError, match="unknown concept"):
        interact.rejection_vector(["z"], names)
    np.testing.assert_array_equal(
        interact.is_indecisive(np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05]])), [True, False]
    )


@pytest.fixture(scope="module")
def session_setup():
    model = CsrModel(
        CountingBackbone(), num_concepts=3, num_classes=2, prototypes_per_concept=4, proj_dim=8
    )
    images = jax.random.normal(jax.random.key(1), (2, 28, 28, 3))
    variables = model.init(jax.random.key(0), images)
    params = dict(variables["params"])
    params["task_head"] = {
        "kernel": jax.random.normal(jax.random.key(2), (12, 2)),
        "bias": jnp.asarray([0.1, -0.1]),
    }
    state = {
        "params": params,
        "batch_stats": variables["batch_stats"],
        "extra": {"proto_mask": jnp.ones((3, 4))},
    }
    return model, state, images


def test_session_reuses_cached_features(session_setup):
    model, state, images = session_setup
    CALLS["backbone"] = 0
    session = interact.CsrSession(model, state, images)
    jax.effects_barrier()
    assert CALLS["backbone"] == 1
    sims = np.asarray(session.sims)  # (B, K, M, 7, 7)
    w = np.asarray(state["params"]["task_head"]["kernel"])
    bias = np.asarray(state["params"]["task_head"]["bias"])

    plain = session.predict()
    s = sims.max((-2, -1)).reshape(2, 12)
    np.testing.assert_allclose(plain["logits"], s @ w + bias, rtol=1e-5, atol=1e-5)

    a = session.importance([(0, 0, 8, 8)], [(16, 16, 12, 12)], 0.2)
    boxed = session.predict(a)
    s_a = (np.maximum(sims, 0) * a).max((-2, -1)).reshape(2, 12)
    np.testing.assert_allclose(boxed["scores"], s_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boxed["logits"], s_a @ w + bias, rtol=1e-5, atol=1e-5)

    rejected = session.predict(rejected=np.array([0.0, 1.0, 0.0]))
    s_r = s.copy()
    s_r[:, 4:8] = 0
    np.testing.assert_allclose(rejected["logits"], s_r @ w + bias, rtol=1e-5, atol=1e-5)

    pm = np.ones((3, 4), np.float32)
    pm[2, 1:3] = 0
    pruned = session.predict(proto_mask=pm)
    s_p = s * pm.reshape(1, 12)
    np.testing.assert_allclose(pruned["logits"], s_p @ w + bias, rtol=1e-5, atol=1e-5)
    both = session.predict(a, np.array([1.0, 0.0, 0.0]))
    s_b = s_a.copy()
    s_b[:, :4] = 0
    np.testing.assert_allclose(both["logits"], s_b @ w + bias, rtol=1e-5, atol=1e-5)
    jax.effects_barrier()
    assert CALLS["backbone"] == 1, "re-prediction must not re-run the backbone"


def test_session_image_grid_mode(session_setup):
    model, state, images = session_setup
    session = interact.CsrSession(model, state, images, interaction_grid="image")
    a = session.importance([], [(0, 0, 14, 28)], 0.5)
    assert a.shape == (28, 28)
    out = session.predict(a)
    up = np.asarray(jax.image.resize(session.sims, (2, 3, 4, 28, 28), "bilinear"))
    s = (np.maximum(up, 0) * a).max((-2, -1)).reshape(2, 12)
    np.testing.assert_allclose(out["scores"], s, rtol=1e-5, atol=1e-6)


def test_explain_writes_before_after_report(tmp_path, session_setup):
    model, state, _ = session_setup
    cfg = csr_tbx11k.get_config("synthetic")
    cfg.model.image_size = 28
    cfg.model.prototypes_per_concept = 4
    cfg.model.proj_dim = 8
    cfg.model.head_input_bn = False  # the session state's plain head
    recs = [Record("t0", "", np.eye(2, dtype=np.float32)[0], concepts=np.ones(3, np.float32))]
    index = DatasetIndex(
        "toy", ["neg", "pos"], {"train": recs}, multilabel=False, concept_names=["a", "b", "c"]
    )
    method = CsrMethod(cfg, index, backbone=CountingBackbone())
    full = {**state, "extra": {**state["extra"], "atlas_index": jnp.zeros((3, 4), jnp.int32)}}
    image = np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    path = str(tmp_path / "x.png")
    cv2.imwrite(path, image)
    out_dir = tmp_path / "report"
    request = ExplainRequest(
        image=path,
        out_dir=str(out_dir),
        source=str(tmp_path),
        positive_boxes=((0, 0, 20, 20),),
        negative_boxes=((30, 30, 20, 20),),
        reject_concepts=("b",),
    )
    files = method.explain(full, request)
    saved = json.loads((out_dir / "result.json").read_text())
    assert files == {"html": str(out_dir / "report.html"), "json": str(out_dir / "result.json")}
    assert saved["prediction_before"] in ("neg", "pos")
    assert saved["concepts"][1]["rejected"] and saved["concepts"][1]["after"]["score"] == 0.0
    assert saved["concepts"][0]["before"]["atlas_image_id"] == "t0"
    # Boxes are rescaled from the 56 px image to the 28 px network input.
    assert saved["interaction"]["boxes_neg"] == [[15.0, 15.0, 10.0, 10.0]]
    assert (out_dir / "report.html").exists() and (out_dir / "after" / "concept_02.png").exists()

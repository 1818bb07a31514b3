"""Insertion/deletion against a sequential numpy reference (RISE's loop) and hand-built cases."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxproto.kernels.prototypes import l2_normalize
from jaxproto.methods.xmir import insdel

H = W = 8


def embed(params, x):
    return l2_normalize(jnp.tanh(x.reshape(x.shape[0], -1) @ params) + 0.5)


def region_embed(params, x):
    r = x[:, :3, :3, :].reshape(x.shape[0], -1)
    return l2_normalize(jnp.concatenate([jnp.tanh(r @ params), jnp.full((x.shape[0], 1), 0.3)], -1))


def test_gaussian_kernel_numbers():
    k = insdel.gaussian_kernel()
    assert k.shape == (51, 51)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert k[25, 25] == pytest.approx(3.1834e-3, rel=1e-3)


def test_blur_matches_scipy_zero_padding():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(12, 10, 3)).astype(np.float32)
    k = rng.random((5, 5)).astype(np.float32)
    got = np.asarray(insdel.blur(jnp.asarray(img), jnp.asarray(k)))
    ref = np.stack(
        [ndimage.correlate(img[..., c].astype(np.float64), k, mode="constant") for c in range(3)],
        -1,
    )
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _reference_curve(params, q, start, finish, order, step):
    start = start.copy()
    n = -(-start.shape[0] * start.shape[1] // step)
    scores = []
    for i in range(n + 1):
        e = np.asarray(embed(params, jnp.asarray(start[None])))[0]
        scores.append(max(0.0, float(np.dot(e, q))))
        if i < n:
            idx = order[step * i : step * (i + 1)]
            r, c = np.unravel_index(idx, start.shape[:2])
            start[r, c, :] = finish[r, c, :]
    return np.array(scores)


@pytest.mark.parametrize("step", [8, 5])
def test_curves_match_sequential_reference(step):
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=(H * W * 3, 6)).astype(np.float32) * 0.2)
    x_r = rng.normal(size=(H, W, 3)).astype(np.float32)
    q = np.asarray(embed(params, jnp.asarray(rng.normal(size=(1, H, W, 3)), jnp.float32)))[0]
    sal = rng.random((H, W)).astype(np.float32)
    k = insdel.gaussian_kernel(5, 1.0)
    out = insdel.insertion_deletion(
        embed, params, jnp.asarray(q), x_r, sal, step=step, chunk_size=4, kernel=k
    )
    order = np.argsort(sal.ravel())[::-1]
    blurred = np.asarray(insdel.blur(jnp.asarray(x_r), jnp.asarray(k)))
    ref_del = _reference_curve(params, q, x_r, np.zeros_like(x_r), order, step)
    ref_ins = _reference_curve(params, q, blurred, x_r, order, step)
    np.testing.assert_allclose(out["deletion"], ref_del, atol=1e-5)
    np.testing.assert_allclose(out["insertion"], ref_ins, atol=1e-5)
    n = len(ref_del) - 1
    assert out["deletion_auc"] == pytest.approx(
        (ref_del.sum() - ref_del[0] / 2 - ref_del[-1] / 2) / n, abs=1e-6
    )


def test_bug_compat_curves_are_flat_and_map_independent():
    rng = np.random.default_rng(2)
    params = jnp.asarray(rng.normal(size=(H * W * 3, 6)).astype(np.float32) * 0.2)
    x_r = rng.normal(size=(H, W, 3)).astype(np.float32)
    q = embed(params, jnp.asarray(x_r[None] * 0.8))[0]
    outs = [
        insdel.insertion_deletion(
            embed,
            params,
            q,
            x_r,
            rng.random((H, W)),
            mode="bug_compat_flat_curves",
            kernel=np.ones((1, 1)),
        )
        for _ in range(2)
    ]
    s_del = max(0.0, float(np.asarray(embed(params, jnp.asarray(x_r[None])))[0] @ np.asarray(q)))
    assert outs[0]["deletion_auc"] == pytest.approx(s_del, abs=1e-5)
    assert outs[0]["insertion_auc"] == pytest.approx(outs[1]["insertion_auc"])
    assert np.ptp(outs[0]["insertion"]) == 0.0


def test_region_map_beats_random_map():
    rng = np.random.default_rng(3)
    params = jnp.asarray(rng.normal(size=(27, 5)).astype(np.float32))
    x_r = rng.normal(size=(H, W, 3)).astype(np.float32)
    q = region_embed(params, jnp.asarray(x_r[None]))[0]
    good = np.zeros((H, W), np.float32)
    good[:3, :3] = 1.0 + rng.random((3, 3))
    rand = rng.random((H, W)).astype(np.float32)
    kw = dict(step=4, tie_break="stable", kernel=insdel.gaussian_kernel(7, 2.0))
    a = insdel.insertion_deletion(region_embed, params, q, x_r, good, **kw)
    b = insdel.insertion_deletion(region_embed, params, q, x_r, rand, **kw)
    assert a["insertion_auc"] > b["insertion_auc"]
    assert a["deletion_auc"] < b["deletion_auc"]


def test_tie_break_orders():
    sal = np.array([[0.5, 1.0], [0.5, 0.5]], np.float32)
    parity = insdel.saliency_order(sal, "torch_parity")
    np.testing.assert_array_equal(parity, np.argsort(sal.ravel())[::-1])
    np.testing.assert_array_equal(insdel.saliency_order(sal, "stable"), [1, 0, 2, 3])
    with pytest.raises(ValueError, match="tie_break"):
        insdel.saliency_order(sal, "random")


def test_outputs_and_keying(tmp_path, monkeypatch):
    results = []
    for query, cls in (("CR.1.2.png", "covid"), ("CR.1.3.png", "covid"), ("n.png", "normal")):
        for rank, (ins, dele) in enumerate(((0.8, 0.2), (0.6, 0.4))):
            results.append(
                {
                    "method": "sbsm",
                    "query": query,
                    "class_name": cls,
                    "retrieved": f"r{rank}.png",
                    "rank": rank,
                    "insertion_auc": ins,
                    "deletion_auc": dele,
                }
            )
    plotted = {}
    monkeypatch.setattr(insdel, "plot_mean_curves", lambda path, curves: plotted.update(curves))
    curves = {"sbsm": {"insertion": [np.ones(3)], "deletion": [np.zeros(3)]}}
    summary = insdel.write_outputs(str(tmp_path), results, curves)
    assert summary["sbsm"]["insertion_auc"] == pytest.approx(0.7)
    assert summary["sbsm"]["per_class"]["covid"]["deletion_auc"] == pytest.approx(0.3)
    per_query = json.loads((tmp_path / "insdel_sbsm.json").read_text())
    assert per_query["CR.1.2.png"]["retrieved"] == ["r0.png", "r1.png"]
    assert plotted == curves
    entries = [
        {"query": q, "insertion_auc": [1.0], "deletion_auc": [0.0], "retrieved": ["a"]}
        for q in ("CR.1.2.png", "CR.1.3.png")
    ]
    compat = insdel.per_query_json(entries, "stem_compat")
    assert compat == {"CR": [[1.0], [0.0], [1.0], [0.0]]}
    with pytest.raises(ValueError, match="twice"):
        insdel.per_query_json(entries + entries[:1])

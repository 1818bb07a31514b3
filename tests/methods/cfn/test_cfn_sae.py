"""SAE loss, decoder-norm constraint and statistics against independent references."""

import jax
import numpy as np
import optax
import pytest

from jaxproto.common import config as common
from jaxproto.core import parallel
from jaxproto.methods.cfn import sae


def _mesh():
    return parallel.make_mesh(common.mesh_block())


def test_loss_is_per_feature_mean_mse_plus_summed_l1():
    rng = np.random.default_rng(0)
    x, x_hat = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    z = np.abs(rng.normal(size=(5, 7)))
    lam = 0.01
    ref = 0.0
    for b in range(5):
        mse = sum((x[b, d] - x_hat[b, d]) ** 2 for d in range(3)) / 3
        ref += mse + lam * sum(abs(z[b, j]) for j in range(7))
    loss, _ = sae.sae_loss(x, z, x_hat, lam)
    np.testing.assert_allclose(float(loss), ref / 5, rtol=1e-5)


@pytest.mark.torch
def test_step_matches_torch_reference():
    """One data-parallel step (8 devices) = torch autograd + projection + Adam + renormalise."""
    import torch

    d, f, b, lam, lr = 6, 16, 16, 3e-3, 5e-3
    rng = np.random.default_rng(1)
    x = rng.normal(size=(b, d)).astype(np.float32)
    model = sae.SparseAutoencoder(f)
    params = jax.tree.map(np.asarray, model.init(jax.random.key(0), x[:1])["params"])
    mesh = _mesh()
    tx = optax.adam(lr)
    step = sae.make_step(model, tx, lam, mesh)
    p, o = params, tx.init(params)
    for _ in range(3):
        p, o, _ = step(p, o, parallel.global_batch(x, mesh))

    t = {
        "b_d": torch.tensor(params["tied_bias"], requires_grad=True),
        "w_e": torch.tensor(params["encoder"]["kernel"], requires_grad=True),
        "b_e": torch.tensor(params["encoder"]["bias"], requires_grad=True),
        "w_d": torch.tensor(params["decoder"], requires_grad=True),
    }
    opt = torch.optim.Adam(list(t.values()), lr=lr, eps=1e-8)
    xt = torch.tensor(x)
    for _ in range(3):
        opt.zero_grad()
        z = torch.relu((xt - t["b_d"]) @ t["w_e"] + t["b_e"])
        x_hat = z @ t["w_d"] + t["b_d"]
        loss = ((xt - x_hat) ** 2).mean(dim=1).mean() + lam * z.abs().sum(dim=1).mean()
        loss.backward()
        with torch.no_grad():
            w, g = t["w_d"], t["w_d"].grad
            g -= (g * w).sum(dim=1, keepdim=True) * w
        opt.step()
        with torch.no_grad():
            t["w_d"] /= t["w_d"].norm(dim=1, keepdim=True)
    np.testing.assert_allclose(np.asarray(p["decoder"]), t["w_d"].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(p["encoder"]["kernel"]), t["w_e"].detach().numpy(), atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(p["tied_bias"]), t["b_d"].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p["decoder"]), axis=1), 1.0, atol=1e-6)


def test_projection_removes_parallel_component():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 5))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    g = rng.normal(size=(4, 5))
    out = np.asarray(sae.project_atom_grads(g, w))
    for j in range(4):
        expect = g[j] - np.dot(w[j], g[j]) * w[j]
        np.testing.assert_allclose(out[j], expect, atol=1e-6)
        assert abs(np.dot(out[j], w[j])) < 1e-6


def test_training_keeps_unit_atoms_and_reports_statistics():
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(64, 4))).astype(np.float32)
    params, hist = sae.train_sae(x, 16, 3e-5, 5e-3, 32, 60, 0, _mesh())
    np.testing.assert_allclose(np.linalg.norm(params["decoder"], axis=1), 1.0, atol=1e-5)
    assert hist[-1]["loss"] < hist[0]["loss"]
    z, x_hat = sae.encode(params, x)
    st = sae.statistics(x, z, x_hat)
    alive = sum(1 for j in range(16) if any(z[i, j] > 0 for i in range(64)))
    assert st["alive"] == alive and st["dead"] == 16 - alive
    assert st["l0"] == pytest.approx(np.mean([np.count_nonzero(r > 0) for r in z]))
    resid = ((x - x_hat) ** 2).sum()
    assert st["r2"] == pytest.approx(1 - resid / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)


def test_paper_step_count():
    assert sae.num_steps(8010, 4096, 200, 0) == (4096, 400)
    assert sae.num_steps(100, 4096, 3, 0) == (100, 3)

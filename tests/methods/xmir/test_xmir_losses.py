"""X-MIR distances and batch-all triplet loss against explicit numpy loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.kernels.prototypes import l2_normalize
from jaxproto.methods.xmir.losses import batch_all_triplet_loss, pairwise_distances


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference_triplet(emb, labels, margin):
    emb = emb.astype(np.float64)
    n = len(labels)
    total, positive, valid = 0.0, 0, 0
    for a, p, q in itertools.product(range(n), repeat=3):
        if a == p or labels[a] != labels[p] or labels[a] == labels[q]:
            continue
        valid += 1
        dap = np.sqrt(np.sum((emb[a] - emb[p]) ** 2))
        dan = np.sqrt(np.sum((emb[a] - emb[q]) ** 2))
        loss = max(0.0, dap - dan + margin)
        if loss > 1e-16:
            positive += 1
        total += loss
    return total / (positive + 1e-16), positive / (valid + 1e-16)


@pytest.mark.parametrize("n_per_class", [3, 10])  # 9 rows: direct cdist; 30 rows: matmul form
def test_batch_all_matches_loops(n_per_class):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), n_per_class)
    rng.shuffle(labels)
    emb = _unit(rng, len(labels), 8)
    loss, frac = batch_all_triplet_loss(jnp.asarray(emb), jnp.asarray(labels), margin=0.2)
    ref_loss, ref_frac = _reference_triplet(emb, labels, 0.2)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(frac), ref_frac, rtol=1e-5)


def test_separated_classes_have_zero_loss():
    centres = np.eye(3, 8, dtype=np.float32)
    labels = np.repeat(np.arange(3), 4)
    emb = centres[labels] + 1e-3 * np.random.default_rng(1).normal(size=(12, 8)).astype(np.float32)
    loss, frac = batch_all_triplet_loss(l2_normalize(jnp.asarray(emb)), jnp.asarray(labels))
    assert float(loss) == 0.0 and float(frac) == 0.0


@pytest.mark.parametrize("mode", ["direct", "matmul"])
def test_pairwise_distances_and_finite_grads(mode):
    rng = np.random.default_rng(2)
    x = _unit(rng, 6, 5)
    x[3] = x[0]  # duplicate rows: zero off-diagonal distance
    ref = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    d = pairwise_distances(jnp.asarray(x), mode=mode)
    np.testing.assert_allclose(np.asarray(d), ref, atol=2e-3 if mode == "matmul" else 1e-6)
    labels = jnp.asarray([0, 1, 0, 0, 1, 1])
    g = jax.grad(lambda e: batch_all_triplet_loss(e, labels, distance_mode=mode)[0])(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g)))


def test_distance_mode_validation():
    with pytest.raises(ValueError, match="distance mode"):
        pairwise_distances(jnp.ones((2, 2)), mode="cosine")

"""Prototype usage statistics and dead-prototype revival (issue #15) against numpy loops."""

import math

import numpy as np

from jaxproto.methods.csr import usage


def test_usage_stats_alive_and_entropy():
    hits = np.array([[5, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    out = usage.usage_stats(hits)
    assert out["alive"] == [1, 4, 0]
    np.testing.assert_allclose(out["entropy"], [0.0, math.log(4), 0.0], atol=1e-12)
    assert all(math.copysign(1, e) > 0 for e in out["entropy"])  # no -0.0 in the logs


def test_revive_picks_far_vectors_and_respects_patience():
    rng = np.random.default_rng(0)
    k, m, d, n = 2, 4, 3, 30
    protos = rng.normal(size=(k, m, d)).astype(np.float32) * 2.0
    vectors = rng.normal(size=(n, k, d))
    vectors /= np.linalg.norm(vectors, axis=-1, keepdims=True)
    present = rng.random((n, k)) < 0.7
    hits = np.array([[3, 0, 0, 2], [1, 0, 4, 0]])
    dead_epochs = np.array([[0, 2, 1, 0], [0, 1, 0, 3]])
    new, revived = usage.revive(protos, hits, dead_epochs, 2, vectors, present, seed="farthest")
    np.testing.assert_array_equal(revived, [[0, 1, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(new[~revived], protos[~revived])
    for kk, mm in zip(*np.nonzero(revived), strict=True):
        alive = hits[kk] > 0
        ref = protos[kk, alive] / np.linalg.norm(protos[kk, alive], axis=-1, keepdims=True)
        cand = vectors[present[:, kk], kk]
        # Brute force: the candidate whose best cosine to an alive prototype is smallest.
        best = min(range(len(cand)), key=lambda j: max(float(cand[j] @ r) for r in ref))
        scale = np.linalg.norm(protos[kk, alive], axis=-1).mean()
        np.testing.assert_allclose(new[kk, mm], cand[best] * scale, rtol=1e-5)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cluster(rng, n=200, d=8, outliers=3):
    """One Gaussian cluster of unit vectors around e_0 plus a few outliers far from it."""
    centre = np.eye(d)[0]
    x = _unit(centre + 0.3 * rng.normal(size=(n, d)))
    far = _unit(-centre + 0.05 * rng.normal(size=(outliers, d)))
    return np.concatenate([x, far]), centre


def test_revive_split_bisects_the_dominant_cluster():
    rng = np.random.default_rng(0)
    cand, centre = _cluster(rng)
    vectors, present = cand[:, None], np.ones((len(cand), 1), bool)
    protos = np.stack([centre * 2.0, rng.normal(size=8)])[None]  # (1, 2, 8): 0 alive, 1 dead
    hits, dead = np.array([[len(cand), 0]]), np.array([[0, 1]])
    new, revived = usage.revive(protos, hits, dead, 1, vectors, present, seed="split")
    assert revived.tolist() == [[False, True]]
    np.testing.assert_array_equal(new[0, 0], protos[0, 0])
    # Reference: principal direction by power iteration, median halves, two-means with python
    # loops, then the vector of the half farther from the prototype nearest that half's centre.
    mean = cand.mean(axis=0)
    cov = sum(np.outer(v - mean, v - mean) for v in cand)
    u = np.ones(8)
    for _ in range(500):
        u = _unit(cov @ u)
    proj = [(v - mean) @ u for v in cand]
    far = [p > sorted(proj)[len(proj) // 2] for p in proj]  # odd count: the median
    for _ in range(10):
        a = _unit(sum(v for v, f in zip(cand, far, strict=True) if not f))
        b = _unit(sum(v for v, f in zip(cand, far, strict=True) if f))
        far = [bool(v @ b > v @ a) for v in cand]
    a = _unit(sum(v for v, f in zip(cand, far, strict=True) if not f))
    b = _unit(sum(v for v, f in zip(cand, far, strict=True) if f))
    if centre @ b > centre @ a:
        far, b = [not f for f in far], a
    want = max((i for i in range(len(cand)) if far[i]), key=lambda i: float(cand[i] @ b))
    np.testing.assert_allclose(new[0, 1], cand[want] * 2.0, rtol=1e-5)
    won = np.argmax(cand @ _unit(new[0]).T, axis=1)
    assert 0.2 < np.mean(won == 1) < 0.8  # a real share of the cluster, not the outliers


def test_revive_split_keeps_every_revived_prototype_in_use_farthest_does_not():
    rng = np.random.default_rng(1)
    cand, centre = _cluster(rng)
    vectors, present = cand[:, None], np.ones((len(cand), 1), bool)
    protos = np.concatenate([centre[None], rng.normal(size=(5, 8))])[None]  # 1 alive, 5 dead
    hits, dead = np.array([[len(cand)] + [0] * 5]), np.array([[0] + [3] * 5])
    shares = {}
    for seed in ("split", "farthest"):
        new, revived = usage.revive(protos, hits, dead, 1, vectors, present, seed=seed)
        assert revived[0, 1:].all()
        won = np.bincount(np.argmax(cand @ _unit(new[0]).T, axis=1), minlength=6)
        shares[seed] = won / len(cand)
    assert shares["split"].min() > 0.03 and shares["split"].max() < 0.5
    assert np.sort(shares["farthest"])[:3].max() < 0.05  # three seeds sit on the outliers


def test_reset_moments_fresh_rows_only():
    revived = np.array([[False, True], [False, False]])
    mu = np.ones((2, 2, 3), np.float32)
    nu = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    opt = {
        "inner": {"mu": {"prototypes": mu, "proj": np.ones((2, 2, 3))}, "count": np.int32(5)},
        "nu": {"prototypes": nu},
    }
    out = usage.reset_moments(opt, revived)
    got_mu, got_nu = out["inner"]["mu"]["prototypes"], out["nu"]["prototypes"]
    assert got_mu[0, 1].sum() == 0 and got_mu.sum() == 9
    np.testing.assert_array_equal(got_nu[0, 1], nu[0, 0])  # mean of the concept's others
    np.testing.assert_array_equal(
        np.delete(got_nu.reshape(4, 3), 1, 0), np.delete(nu.reshape(4, 3), 1, 0)
    )
    assert out["inner"]["mu"]["proj"].sum() == 12 and out["inner"]["count"] == 5

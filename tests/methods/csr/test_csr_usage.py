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
    new, revived = usage.revive(protos, hits, dead_epochs, 2, vectors, present)
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


def test_reset_moments_zeroes_only_revived_rows():
    revived = np.array([[False, True], [False, False]])
    mu = np.ones((2, 2, 3), np.float32)
    opt = {"inner": {"mu": {"prototypes": mu, "proj": np.ones((2, 2, 3))}, "count": np.int32(5)}}
    out = usage.reset_moments(opt, revived)
    assert out["inner"]["mu"]["prototypes"][0, 1].sum() == 0
    assert out["inner"]["mu"]["prototypes"].sum() == 9
    assert out["inner"]["mu"]["proj"].sum() == 12 and out["inner"]["count"] == 5

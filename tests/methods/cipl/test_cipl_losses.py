"""CIPL loss terms vs independent numpy loops (cipl.md §2)."""

import jax
import numpy as np
import pytest

from jaxproto.methods.cipl import losses as L
from jaxproto.methods.cipl.model import prototype_class_identity


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_foreground_classes_off_by_one():
    assert list(L.foreground_classes(15, 14, fix_last_class=False)) == list(range(13))
    assert list(L.foreground_classes(15, 14, fix_last_class=True)) == list(range(14))
    assert list(L.foreground_classes(4, 0, fix_last_class=False)) == [1, 2]
    assert list(L.all_foreground(4, 1)) == [0, 2, 3]
    with pytest.raises(ValueError):
        L.foreground_classes(4, 4, False)


def test_background_ce():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 4)) * 3
    y = (rng.random((5, 4)) < 0.5).astype(np.float64)
    fg, bg = np.array([0, 1]), 3
    tot = 0.0
    for b in range(5):
        for k in fg:
            p = _sig(z[b, k] - z[b, bg])
            tot += -(y[b, k] * np.log(p) + (1 - y[b, k]) * np.log(1 - p))
    got = L.background_ce(z.astype(np.float32), y.astype(np.float32), fg, bg)
    np.testing.assert_allclose(got, tot / (5 * len(fg)), rtol=1e-5)


def test_cluster_separation():
    rng = np.random.default_rng(1)
    c, ppc, n = 3, 2, 4
    ident = prototype_class_identity(c, ppc)
    d = rng.random((n, c * ppc)) * 10
    y = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], np.float64)
    clst, sep = [], []
    for b in range(n):
        pos = [k for k in range(c) if y[b, k]]
        clst.append(sum(min(d[b, j] for j in range(c * ppc) if j // ppc == k) for k in pos))
        sep.append(min(d[b, j] for j in range(c * ppc) if j // ppc not in pos))
    got_c, got_s = L.cluster_separation(d.astype(np.float32), y.astype(np.float32), ident)
    np.testing.assert_allclose(got_c, np.mean(clst), rtol=1e-5)
    np.testing.assert_allclose(got_s, np.mean(sep), rtol=1e-5)


def _coattn_ref(fa, fb):
    n, h, w, d = fa.shape
    outa, outb = np.zeros_like(fa, np.float64), np.zeros_like(fb, np.float64)
    for s in range(n):
        a = fa[s].reshape(-1, d).T.astype(np.float64)  # (D, N)
        b = fb[s].reshape(-1, d).T.astype(np.float64)
        m = a.shape[1]
        a2 = np.array([[-np.sum((a[:, i] - b[:, j]) ** 2) for j in range(m)] for i in range(m)])
        A = np.exp(a2 - a2.max(0, keepdims=True))
        A /= A.sum(0, keepdims=True)  # softmax over i
        Bt = a2.T
        B = np.exp(Bt - Bt.max(0, keepdims=True))
        B /= B.sum(0, keepdims=True)  # softmax over j (rows of B)
        fb_co = np.stack([sum(A[i, j] * a[:, i] for i in range(m)) for j in range(m)], 1)
        fa_co = np.stack([sum(B[j, i] * b[:, j] for j in range(m)) for i in range(m)], 1)
        outa[s] = fa_co.T.reshape(h, w, d)
        outb[s] = fb_co.T.reshape(h, w, d)
    return outa, outb


@pytest.mark.parametrize("mode", ["explicit", "expanded"])
def test_co_attention(mode):
    rng = np.random.default_rng(2)
    fa = rng.random((2, 2, 3, 4)).astype(np.float32)
    fb = rng.random((2, 2, 3, 4)).astype(np.float32)
    ra, rb = _coattn_ref(fa, fb)
    ga, gb = L.co_attention(fa, fb, mode)
    np.testing.assert_allclose(ga, ra, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb, rb, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        L.co_attention(fa, fb, "bogus")


def test_interpretation_alignment():
    rng = np.random.default_rng(3)
    s = rng.random((3, 2, 2, 5)).astype(np.float32)
    t = rng.random((3, 2, 2, 5)).astype(np.float32)
    tot = 0.0
    for b in range(3):
        for i in range(2):
            for j in range(2):
                u, v = s[b, i, j].astype(np.float64), t[b, i, j].astype(np.float64)
                tot += 1 - u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    np.testing.assert_allclose(L.interpretation_alignment(s, t), tot / 3, rtol=1e-5)
    g = jax.grad(lambda tt: L.interpretation_alignment(s, tt))(t)
    assert np.all(np.asarray(g) == 0)


def test_prediction_alignment():
    rng = np.random.default_rng(4)
    zs, zt = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    fg, bg = np.array([0, 2, 3]), 4

    def q(z, i, k):
        e = np.exp([z[i, bg], z[i, k]])
        return e / e.sum()

    tot = 0.0
    for k in fg:
        for i in range(4):
            for j in range(4):
                tot += (q(zt, i, k) @ q(zt, j, k) - q(zs, i, k) @ q(zs, j, k)) ** 2
    got = L.prediction_alignment(zs.astype(np.float32), zt.astype(np.float32), fg, bg)
    np.testing.assert_allclose(got, tot / (len(fg) * 16), rtol=1e-4)

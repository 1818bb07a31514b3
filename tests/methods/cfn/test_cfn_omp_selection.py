"""OMP against scikit-learn and facility-location selection against brute force."""

import itertools

import numpy as np
import pytest
from sklearn.linear_model import OrthogonalMatchingPursuit

from jaxproto.methods.cfn import omp, selection


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_omp_matches_sklearn(fit_intercept):
    rng = np.random.default_rng(0)
    d, k, b, n = 24, 40, 6, 7  # overcomplete (k > d), as with ResNet-18 and K = 800
    x = rng.normal(size=(d, k))
    x /= np.linalg.norm(x, axis=0)
    y = rng.normal(size=(b, d)) + 0.5
    w, beta = omp.omp(x, y, n, fit_intercept)
    rebuilt = np.asarray(omp.reconstruct(x, w, beta))
    for i in range(b):
        ref = OrthogonalMatchingPursuit(n_nonzero_coefs=n, fit_intercept=fit_intercept).fit(x, y[i])
        np.testing.assert_allclose(np.asarray(w[i]), ref.coef_, atol=2e-4)
        np.testing.assert_allclose(float(beta[i]), ref.intercept_, atol=2e-4)
        np.testing.assert_allclose(rebuilt[i], ref.predict(x), atol=2e-4)


def test_omp_stops_when_signal_is_explained():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 12))
    y = (x[:, [2, 5]] @ np.array([1.5, -2.0]))[None]
    w, beta = omp.omp(x, y, 6, False)
    assert np.count_nonzero(np.abs(np.asarray(w[0])) > 1e-5) == 2
    np.testing.assert_allclose(np.asarray(w[0])[[2, 5]], [1.5, -2.0], atol=1e-4)


def test_omp_batched_pads_the_last_chunk():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 10)), rng.normal(size=(5, 8))
    w, b = omp.omp_batched(x, y, 3, True, chunk=4)
    w_all, b_all = omp.omp(x, y, 3, True)
    np.testing.assert_allclose(w, np.asarray(w_all), atol=1e-5)
    np.testing.assert_allclose(b, np.asarray(b_all), atol=1e-5)


def _objective(s, subset):
    return float(np.maximum(s[:, list(subset)].max(axis=1), 0).sum()) if subset else 0.0


def test_lazy_greedy_equals_naive_greedy_and_is_near_optimal():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(4, 10))
        s = selection.cosine_matrix(rng.normal(size=(n, 3)))
        k = int(rng.integers(1, n))
        chosen, values = selection.facility_location(s, k)
        cur, naive = [], []
        for _ in range(k):  # naive greedy: recompute every candidate's objective
            gains = [(_objective(s, cur + [j]), -j) for j in range(n) if j not in cur]
            best = max(gains)
            cur.append(-best[1])
            naive.append(best[0])
        np.testing.assert_allclose(values, naive, atol=1e-9)
        assert _objective(s, chosen) == pytest.approx(naive[-1])
        opt = max(_objective(s, c) for c in itertools.combinations(range(n), k))
        assert values[-1] >= (1 - 1 / np.e) * opt - 1e-9


def test_cosine_matrix():
    v = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    s = selection.cosine_matrix(v)
    np.testing.assert_allclose(s[0, 1], 1 / np.sqrt(2))
    np.testing.assert_allclose(s[1, 2], -1 / np.sqrt(2))
    np.testing.assert_allclose(np.diag(s), 1.0)


def test_batched_logreg_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    from jaxproto.methods.cfn import cav

    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 40, 5)).astype(np.float32)
    y = (x[..., 0] + 0.5 * rng.normal(size=(3, 40)) > 0.3).astype(np.float32)
    mask = np.ones((3, 40), np.float32)
    mask[1, 30:] = 0  # a shorter problem, padded
    theta = np.asarray(cav.logreg_newton(x, y, mask))
    for i in range(3):
        keep = mask[i] > 0
        ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(x[i][keep], y[i][keep])
        np.testing.assert_allclose(theta[i, :-1], ref.coef_[0], atol=5e-4)
        np.testing.assert_allclose(theta[i, -1], ref.intercept_[0], atol=5e-4)

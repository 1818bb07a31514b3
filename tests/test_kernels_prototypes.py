"""Prototype distance/similarity kernels vs naive numpy loops."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxproto.kernels import prototypes as kp


def _naive_l2(z, p):
    n, h, w, _ = z.shape
    out = np.zeros((n, h, w, p.shape[0]))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for j in range(p.shape[0]):
                    out[i, y, x, j] = np.sum((z[i, y, x].astype(np.float64) - p[j]) ** 2)
    return out


def _data(seed=0, n=2, h=3, w=4, d=5, p=6):
    rng = np.random.default_rng(seed)
    return rng.random((n, h, w, d), np.float32), rng.random((p, d), np.float32)


def test_l2_distance_maps_match_loop():
    z, p = _data()
    ref = _naive_l2(z, p)
    np.testing.assert_allclose(kp.l2_distance_maps(z, p), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kp.l2_distance_maps_direct(z, p), ref, rtol=1e-5, atol=1e-5)


def test_l2_distance_is_clamped_at_zero():
    z = np.full((1, 1, 1, 4), 0.3, np.float32)
    d = kp.l2_distance_maps(z, z[0, 0])
    assert float(d.min()) >= 0.0


def test_pooling_similarity_and_argmin():
    z, p = _data(1)
    d = np.asarray(kp.l2_distance_maps(z, p))
    ref = _naive_l2(z, p)
    mins = np.array([[ref[i, ..., j].min() for j in range(p.shape[0])] for i in range(z.shape[0])])
    np.testing.assert_allclose(kp.min_pool(d), mins, rtol=1e-5)
    loc = np.asarray(kp.argmin_location(d))
    for i in range(z.shape[0]):
        for j in range(p.shape[0]):
            assert loc[i, j] == np.argmin(d[i, ..., j].reshape(-1))
    np.testing.assert_allclose(kp.exp_similarity(d, 5.0), np.exp(-d / 5.0), rtol=1e-6)
    np.testing.assert_allclose(kp.log_similarity(d), np.log((d + 1) / (d + 1e-4)), rtol=1e-5)


def test_l2_normalize_matches_numpy_and_is_nan_free_at_zero():
    z, _ = _data(2)
    z[0, 0, 0] = 0.0
    ref = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(kp.l2_normalize(z), ref, rtol=1e-6, atol=1e-7)
    grad = jax.grad(lambda x: kp.l2_normalize(x).sum())(jnp.zeros((3,)))
    assert np.all(np.isfinite(np.asarray(grad)))


def test_kernels_on_sharded_batch():
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    n = jax.device_count()
    z, p = _data(3, n=n)
    zs = jax.device_put(z, NamedSharding(mesh, P("data")))
    f = jax.jit(lambda a, b: kp.min_pool(kp.l2_distance_maps(a, b)))
    mins = f(zs, jnp.asarray(p))
    ref = _naive_l2(z, p).min(axis=(1, 2))
    np.testing.assert_allclose(mins, ref, rtol=1e-5, atol=1e-5)

"""Similarity saliency kernels: SBSM against a per-mask loop, SimAtt/SimCAM closed forms, and a
hand-built model whose similarity depends on one region only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.kernels.saliency import (
    sbsm_masks,
    sbsm_saliency,
    sbsm_self_saliency,
    sbsm_windows,
    simatt_maps,
    simcam_maps,
    upsample,
)
from jaxproto.methods.xmir.losses import l2_normalize

H = W = 16
REGION = (slice(4, 8), slice(9, 13))  # rows, cols of the only pixels the region model sees


def linear_embed(params, x):
    return l2_normalize(jnp.tanh(x.reshape(x.shape[0], -1) @ params))


def region_embed(params, x):
    r = x[:, REGION[0], REGION[1], :].reshape(x.shape[0], -1)
    return l2_normalize(jnp.concatenate([jnp.tanh(r @ params), jnp.ones((x.shape[0], 1))], -1))


def region_features(params, x):
    """(B, 4, 4, C) map from 4x4 cells; zero outside the cell holding the region."""
    b = x.shape[0]
    cells = x.reshape(b, 4, 4, 4, 4, x.shape[-1]).mean(axis=(2, 4))
    keep = jnp.zeros((4, 4)).at[1, 2].set(1.0)[None, :, :, None]
    return jax.nn.relu(cells @ params["proj"]) * keep


def gap_head(params, a):
    return a.mean(axis=(1, 2))


def fc_head(params, a):
    return a.mean(axis=(1, 2)) @ params["fc"] + params["fc_bias"]


def test_sbsm_geometry_at_224():
    rows = sbsm_windows(224)
    assert rows.shape == (49, 224)  # 49 offsets per axis -> N = 2401 masks
    coverage = rows.sum(0)[:, None] * rows.sum(0)[None, :]
    assert set(np.unique(coverage).astype(int)) == {16, 20, 25}
    area = rows.sum(1)[:, None] * rows.sum(1)[None, :]
    assert area.min() == 9 and area.max() == 576


def test_sbsm_matches_per_mask_loop():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(H, W, 3)).astype(np.float32)
    params = jnp.asarray(rng.normal(size=(H * W * 3, 8)).astype(np.float32) * 0.1)
    q = linear_embed(params, jnp.asarray(rng.normal(size=(1, H, W, 3)), jnp.float32))[0]
    masks = sbsm_masks(H, W, window=6, stride=3)
    base = np.linalg.norm(np.asarray(q) - np.asarray(linear_embed(params, image[None]))[0])
    num = np.zeros((H, W))
    cov = np.zeros((H, W))
    self_num = np.zeros((H, W))
    e_x = np.asarray(linear_embed(params, image[None]))[0]
    for m in masks:  # the straightforward reference: one forward per mask
        e = np.asarray(linear_embed(params, jnp.asarray((m[..., None] * image)[None])))[0]
        num += (1 - m) * max(0.0, np.linalg.norm(np.asarray(q) - e) - base)
        self_num += (1 - m) * np.linalg.norm(e_x - e)
        cov += 1 - m
    got = sbsm_saliency(
        linear_embed, params, q, jnp.asarray(image), window=6, stride=3, chunk_size=7
    )
    np.testing.assert_allclose(np.asarray(got), num / cov, atol=2e-4)
    got_self = sbsm_self_saliency(
        linear_embed, params, jnp.asarray(image), window=6, stride=3, chunk_size=16
    )
    np.testing.assert_allclose(np.asarray(got_self), self_num / cov, atol=1e-5)


def _in_region(idx):
    r, c = np.unravel_index(idx, (H, W))
    return REGION[0].start <= r < REGION[0].stop and REGION[1].start <= c < REGION[1].stop


def test_sbsm_peaks_in_region():
    rng = np.random.default_rng(1)
    params = jnp.asarray(rng.normal(size=(4 * 4 * 3, 6)).astype(np.float32))
    x_r = rng.normal(size=(H, W, 3)).astype(np.float32)
    x_q = x_r + 0.1 * rng.normal(size=(H, W, 3)).astype(np.float32)
    q = region_embed(params, jnp.asarray(x_q[None]))[0]
    sal = np.asarray(sbsm_saliency(region_embed, params, q, jnp.asarray(x_r), window=4, stride=2))
    assert _in_region(np.argmax(sal))
    assert sal[0, 0] == 0.0 and sal[-1, 0] == 0.0  # occluding far from the region changes nothing
    self_sal = np.asarray(
        sbsm_self_saliency(region_embed, params, jnp.asarray(x_r), window=4, stride=2)
    )
    assert _in_region(np.argmax(self_sal))


def test_sbsm_batch_sharding_same_result():
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.P("data"))
    rng = np.random.default_rng(2)
    params = jnp.asarray(rng.normal(size=(4 * 4 * 3, 6)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(H, W, 3)).astype(np.float32))
    q = region_embed(params, x[None] * 0.5)[0]
    chunk = 8 * jax.device_count()
    a = sbsm_saliency(region_embed, params, q, x, window=4, stride=2, chunk_size=chunk)
    b = sbsm_saliency(
        region_embed, params, q, x, window=4, stride=2, chunk_size=chunk, batch_sharding=sharding
    )
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _feature_params(rng, with_fc):
    p = {"proj": jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))}
    if with_fc:
        p["fc"] = jnp.asarray(rng.normal(size=(5, 4)).astype(np.float32))
        p["fc_bias"] = jnp.asarray(rng.normal(size=(4,)).astype(np.float32))
    return p


@pytest.mark.parametrize("with_fc", [False, True])
def test_simatt_closed_form_and_region(with_fc):
    rng = np.random.default_rng(3)
    params = _feature_params(rng, with_fc)
    head = fc_head if with_fc else gap_head
    xq = jnp.asarray(rng.normal(size=(H, W, 3)).astype(np.float32))
    xr = jnp.asarray(rng.normal(size=(H, W, 3)).astype(np.float32))
    maps = np.asarray(simatt_maps(region_features, head, params, xq, xr))
    assert maps.shape == (2, H, W)
    # closed form (spec §4.3): alpha_t = (1/hw) sum_d sign(e_t,d) w_d W_d,c (W = I without fc)
    feats = np.asarray(region_features(params, jnp.stack([xq, xr])), np.float64)
    e = np.asarray(head(params, jnp.asarray(feats, jnp.float32)), np.float64)
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    w = 1 - np.abs(unit[0] - unit[1])
    fcw = np.asarray(params["fc"], np.float64).T if with_fc else np.eye(5)
    for t in range(2):
        alpha = (np.sign(e[t]) * w) @ fcw / 16.0
        cam = np.maximum(np.einsum("hwc,c->hw", feats[t], alpha), 0)
        ref = np.asarray(upsample(jnp.asarray(cam[None], jnp.float32), (H, W)))[0]
        np.testing.assert_allclose(maps[t], ref, rtol=1e-4, atol=1e-6)
    if maps[1].max() > 0:
        assert _in_region(np.argmax(maps[1]))


def test_simatt_region_peak_without_fc():
    rng = np.random.default_rng(4)
    params = _feature_params(rng, False)
    params["proj"] = jnp.abs(params["proj"])
    x = jnp.asarray(np.abs(rng.normal(size=(H, W, 3))).astype(np.float32))
    maps = np.asarray(simatt_maps(region_features, gap_head, params, x, x * 0.9))
    assert maps[1].max() > 0 and _in_region(np.argmax(maps[1]))


@pytest.mark.parametrize("with_fc", [False, True])
def test_simcam_matches_loops(with_fc):
    rng = np.random.default_rng(5)
    aq = np.abs(rng.normal(size=(3, 3, 4))).astype(np.float32)
    ar = np.abs(rng.normal(size=(3, 3, 4))).astype(np.float32)
    kernel = rng.normal(size=(4, 2)).astype(np.float32) if with_fc else None
    bias = rng.normal(size=(2,)).astype(np.float32) if with_fc else None
    got = np.asarray(
        simcam_maps(
            jnp.asarray(aq),
            jnp.asarray(ar),
            (12, 12),
            None if kernel is None else jnp.asarray(kernel),
            None if bias is None else jnp.asarray(bias),
        )
    )

    def x_of(a, i, j):
        return a[i, j] @ kernel + bias / 9.0 if with_fc else a[i, j]

    d = np.zeros((3, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            for k in range(3):
                for m in range(3):
                    d[i, j, k, m] = np.dot(x_of(aq, i, j), x_of(ar, k, m))
    d = np.maximum(d / d.max(), 0)
    small = np.stack([d.sum((2, 3)), d.sum((0, 1))]).astype(np.float32)
    ref = np.asarray(upsample(jnp.asarray(small), (12, 12)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_simcam_region_peak():
    rng = np.random.default_rng(6)
    params = _feature_params(rng, False)
    params["proj"] = jnp.abs(params["proj"])
    x = jnp.asarray(np.abs(rng.normal(size=(2, H, W, 3))).astype(np.float32))
    feats = region_features(params, x)
    maps = np.asarray(simcam_maps(feats[0], feats[1], (H, W)))
    assert _in_region(np.argmax(maps[0])) and _in_region(np.argmax(maps[1]))


@pytest.mark.torch
def test_upsample_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    small = np.random.default_rng(7).normal(size=(2, 7, 7)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(small)[None], size=(224, 224), mode="bilinear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(np.asarray(upsample(jnp.asarray(small), (224, 224))), ref, atol=1e-5)

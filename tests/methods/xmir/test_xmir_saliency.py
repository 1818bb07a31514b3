"""Similarity saliency kernels: SBSM against a per-mask loop, SimAtt/SimCAM closed forms, and a
hand-built model whose similarity depends on one region only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxproto.kernels.prototypes import l2_normalize
from jaxproto.methods.xmir.model import XmirNet
from jaxproto.methods.xmir.saliency import (
    mask_query,
    sbsm_feature_saliency,
    sbsm_masks,
    sbsm_saliency,
    sbsm_self_saliency,
    sbsm_windows,
    simatt_channel_weights,
    simatt_maps,
    simcam_maps,
    simscorecam_saliency,
    upsample,
)

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


# ------------------------------------------------------------------ the rest of explanations.py


def _sbsm_loop(embed, params, q_emb, image, window, stride):
    """SBSM by one forward per mask (the original's formula, numpy)."""
    masks = sbsm_masks(image.shape[0], image.shape[1], window=window, stride=stride)
    base = np.linalg.norm(q_emb - np.asarray(embed(params, jnp.asarray(image[None])))[0])
    num, cov = np.zeros(image.shape[:2]), np.zeros(image.shape[:2])
    for m in masks:
        e = np.asarray(embed(params, jnp.asarray((m[..., None] * image)[None])))[0]
        num += (1 - m) * max(0.0, np.linalg.norm(q_emb - e) - base)
        cov += 1 - m
    return num / cov


@pytest.mark.parametrize("mode", ["mask", "blur"])
def test_sbsm_mask_and_blur_match_loop(mode):
    from scipy import ndimage

    rng = np.random.default_rng(10)
    params = jnp.asarray(rng.normal(size=(H * W * 3, 8)).astype(np.float32) * 0.1)
    xq = rng.normal(size=(H, W, 3)).astype(np.float32)
    xr = rng.normal(size=(H, W, 3)).astype(np.float32)
    mask = np.zeros((H, W), np.float32)
    mask[2:9, 3:12] = 1.0
    if mode == "mask":
        ref_q = mask[..., None] * xq
    else:  # blur in [0, 1] pixel space with zero padding, sigma 2 -> 17x17 kernel
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        g = np.exp(-0.5 * ((np.arange(17) - 8) / 2.0) ** 2)
        k = np.outer(g, g) / np.outer(g, g).sum()
        pix = xq.astype(np.float64) * std + mean
        blurred = np.stack(
            [ndimage.correlate(pix[..., c], k, mode="constant") for c in range(3)], -1
        )
        ref_q = mask[..., None] * xq + (1 - mask[..., None]) * (blurred - mean) / std
    got_q = np.asarray(mask_query(jnp.asarray(xq), jnp.asarray(mask), mode, 2.0))
    np.testing.assert_allclose(got_q, ref_q, atol=1e-5)
    q = np.asarray(linear_embed(params, jnp.asarray(ref_q[None], jnp.float32)))[0]
    ref = _sbsm_loop(linear_embed, params, q, xr, 6, 3)
    got = sbsm_saliency(linear_embed, params, jnp.asarray(q), jnp.asarray(xr), window=6, stride=3)
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-4)


@pytest.mark.parametrize("with_fc", [False, True])
def test_sbsm_feature_matches_cell_loop(with_fc):
    rng = np.random.default_rng(11)
    params = _feature_params(rng, with_fc)
    head = fc_head if with_fc else gap_head
    feats = np.abs(rng.normal(size=(4, 4, 5))).astype(np.float32)
    feats[rng.random((4, 4, 5)) < 0.3] = 0.0
    q = rng.normal(size=(4 if with_fc else 5,)).astype(np.float32)
    q /= np.linalg.norm(q)

    def unit_head(a):  # a (h, w, C) pooled over its kept cells, as the original
        e = np.asarray(head(params, jnp.asarray(a[None] * 16.0 / keep.sum())))[0]
        return e / np.linalg.norm(e)

    keep = np.ones((4, 4))
    base = np.linalg.norm(q - unit_head(feats))
    num = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            keep = np.ones((4, 4))
            keep[i, j] = 0.0
            d = np.linalg.norm(q - unit_head(feats * keep[..., None]))
            num[i, j] = max(0.0, d - base)  # coverage 1 per cell for 1x1 windows
    ref = np.asarray(upsample(jnp.asarray(num[None], jnp.float32), (H, W)))[0]
    got = sbsm_feature_saliency(head, params, jnp.asarray(q), jnp.asarray(feats), (H, W))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("masking", ["multiply", "matmul_compat"])
def test_simscorecam_matches_channel_loop(masking):
    rng = np.random.default_rng(12)
    params = _feature_params(rng, False)
    params["proj"] = params["proj"].at[:, 0].set(-jnp.abs(params["proj"][:, 0]))  # dead channel
    params["lin"] = jnp.asarray(rng.normal(size=(H * W * 3, 6)).astype(np.float32) * 0.1)

    def embed(p, x):
        return l2_normalize(jnp.tanh(x.reshape(x.shape[0], -1) @ p["lin"]))

    x = np.abs(rng.normal(size=(H, W, 3))).astype(np.float32)
    q = np.asarray(embed(params, jnp.asarray(rng.normal(size=(1, H, W, 3)), jnp.float32)))[0]
    feats = np.asarray(region_features(params, jnp.asarray(x[None])))[0]
    act = np.asarray(upsample(jnp.asarray(np.moveaxis(feats, -1, 0)), (H, W)), np.float64)
    base = np.linalg.norm(q - np.asarray(embed(params, jnp.asarray(x[None])))[0])
    scores, kept = [], []
    for c in range(act.shape[0]):
        a = act[c]
        if a.max() == a.min():
            continue  # the original drops constant channels
        n = 1 - (a - a.min()) / (a.max() - a.min())
        masked = n[..., None] * x if masking == "multiply" else np.einsum("hw,wvc->hvc", n, x)
        e = np.asarray(embed(params, jnp.asarray(masked[None], jnp.float32)))[0]
        scores.append(max(0.0, np.linalg.norm(q - e) - base))
        kept.append(a)
    assert 0 < len(kept) < act.shape[0]
    s = np.array(scores)
    s = (s - s.min()) / (s.max() - s.min())
    ref = np.mean(s[:, None, None] * np.stack(kept), axis=0)
    got = simscorecam_saliency(
        embed, region_features, params, jnp.asarray(q), jnp.asarray(x), masking=masking,
        chunk_size=2,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("with_fc", [False, True])
def test_simatt_triplet_closed_form(with_fc):
    rng = np.random.default_rng(13)
    params = _feature_params(rng, with_fc)
    head = fc_head if with_fc else gap_head
    xs = [jnp.asarray(rng.normal(size=(H, W, 3)).astype(np.float32)) for _ in range(3)]
    maps = np.asarray(simatt_maps(region_features, head, params, *xs))
    assert maps.shape == (3, H, W)
    feats = np.asarray(region_features(params, jnp.stack(xs)), np.float64)
    e = np.asarray(head(params, jnp.asarray(feats, jnp.float32)), np.float64)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    w = (1 - np.abs(u[0] - u[1])) * np.abs(u[0] - u[2])  # positive factor flipped, negative kept
    fcw = np.asarray(params["fc"], np.float64).T if with_fc else np.eye(5)
    for t in range(3):
        alpha = (np.sign(e[t]) * w) @ fcw / 16.0
        cam = np.maximum(np.einsum("hwc,c->hw", feats[t], alpha), 0)
        ref = np.asarray(upsample(jnp.asarray(cam[None], jnp.float32), (H, W)))[0]
        np.testing.assert_allclose(maps[t], ref, rtol=1e-4, atol=1e-6)


def test_simatt_channel_weights_hand_computed_with_zero_activations():
    """The gradient is w.r.t. the final ReLU's output A: channels whose activations are 0 at
    some (even all) positions keep their full weight (a second ReLU would zero them)."""
    a = np.zeros((2, 2, 2, 3), np.float32)  # (T, h, w, C): many exact zeros
    a[0, 0, 0] = [1.0, 0.0, 2.0]
    a[0, 1, 1] = [0.0, 0.0, 1.0]
    a[1, 0, 1] = [3.0, 0.0, 0.0]
    a[1, 1, 0] = [1.0, 1.0, 0.0]
    kernel = np.array([[1.0, -1.0], [2.0, 1.0], [-1.0, 3.0]], np.float32)  # (C, D)
    bias = np.array([0.5, -0.25], np.float32)
    net = XmirNet(arch="densenet_tiny", embedding_dim=2)
    params = {"params": {"fc": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}}

    def head(p, feats):
        return net.apply(p, feats, method=XmirNet.head)

    feats, alpha = simatt_channel_weights(lambda p, x: x, head, params, jnp.asarray(a))
    # by hand: e_t = mean_ij A_t W + b, w = 1 - |e0/|e0| - e1/|e1||, alpha_t = sign(e_t) w W^T / 4
    e = a.reshape(2, 4, 3).mean(1) @ kernel + bias  # [[0.5, 1.75], [1.0, 1.0]] + ...
    np.testing.assert_allclose(e, [[0.75, 1.25], [1.25, 0.5]], atol=1e-6)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    w = 1 - np.abs(u[0] - u[1])
    want = (np.sign(e) * w) @ kernel.T / 4.0
    np.testing.assert_allclose(np.asarray(alpha), want, rtol=1e-5)
    assert np.all(np.asarray(alpha)[:, 1] != 0)  # channel 1 is zero in 7 of 8 positions

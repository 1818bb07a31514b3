"""CIPL's data: transforms vs PIL references, determinism, geometry sharing of the pair views;
sampler weights and the pair rule vs independent numpy references (cipl.md §3.3, §3.4)."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from jaxproto.common.errors import DataError
from jaxproto.data import transforms
from jaxproto.methods.cipl import data as D


def _img(h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "fn,enh",
    [
        (D.adjust_brightness, ImageEnhance.Brightness),
        (D.adjust_contrast, ImageEnhance.Contrast),
        (D.adjust_saturation, ImageEnhance.Color),
        (D.adjust_sharpness, ImageEnhance.Sharpness),
    ],
)
@pytest.mark.parametrize("factor", [0.8, 1.17])
def test_photometric_ops_match_pil_enhance(fn, enh, factor):
    img = _img()
    ref = np.asarray(enh(Image.fromarray(img)).enhance(factor), np.int32)
    assert np.abs(fn(img, factor).astype(np.int32) - ref).max() <= 2


@pytest.mark.parametrize("shift", [0.01, -0.01, 0.25])
def test_hue_shift_matches_pil_hsv(shift):
    img = _img()
    h, sat, v = Image.fromarray(img).convert("HSV").split()
    hh = (np.asarray(h, np.int32) + int(round(shift * 255))) % 256
    ref = Image.merge("HSV", (Image.fromarray(hh.astype(np.uint8)), sat, v)).convert("RGB")
    diff = np.abs(D.adjust_hue(img, shift).astype(np.int32) - np.asarray(ref, np.int32))
    assert np.median(diff) <= 1 and np.percentile(diff, 99) <= 8  # two 8-bit HSV codecs
    np.testing.assert_array_equal(D.adjust_hue(img, 0.0), img)


def test_spline_basis_interpolates_control_points():
    a = D.spline_basis(3, 9)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a[[0, 4, 8]], np.eye(3), atol=1e-5)


def test_elastic_deform():
    img = _img(32, 32)
    rng = np.random.default_rng(0)
    same = D.elastic_deform(img, rng, sigma=0.0, grayscale=False)
    np.testing.assert_array_equal(same[2:-2, 2:-2], img[2:-2, 2:-2])
    a = D.elastic_deform(img, np.random.default_rng(1), sigma=8.0)
    b = D.elastic_deform(img, np.random.default_rng(1), sigma=8.0)
    np.testing.assert_array_equal(a, b)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    gray = np.asarray(Image.fromarray(img).convert("L"), np.int64)  # PIL luma
    assert np.abs(a[..., 0].astype(np.int64) - gray).mean() > 5  # it actually moved pixels


def test_cutout_abs():
    img = np.full((60, 60, 3), 200, np.uint8)
    out = D.cutout_abs(img, np.random.default_rng(0))
    zeros = (out == 0).all(-1)
    assert 0 < zeros.sum() <= 625
    assert (img == 200).all()  # input untouched


def test_affine_matrix_against_closed_form():
    c = (10.0, 20.0)
    m = D.affine_matrix(0.0, (3.0, -2.0), 2.0, (0.0, 0.0), c)
    np.testing.assert_allclose(m, [[2, 0, -10 + 3], [0, 2, -20 - 2]], atol=1e-5)
    m = D.affine_matrix(90.0, (0.0, 0.0), 1.0, (0.0, 0.0), c)
    p = m @ np.array([11.0, 20.0, 1.0])  # a point right of the centre turns by 90 degrees
    np.testing.assert_allclose(np.abs(p - np.array(c)), [0, 1], atol=1e-5)
    m = D.affine_matrix(0.0, (0.0, 0.0), 1.0, (45.0, 0.0), (0.0, 0.0))
    np.testing.assert_allclose(m[:, :2], [[1, -1], [0, 1]], atol=1e-5)  # x-shear tan(45) = 1


@pytest.mark.parametrize(
    "tf,shape",
    [
        (D.CiplTrainTransform(48), (48, 48, 3)),
    ],
)
def test_train_transforms_shape_dtype_determinism(tf, shape):
    img = _img(64, 70)
    a = tf(img, np.random.default_rng(3))
    b = tf(img, np.random.default_rng(3))
    c = [tf(img, np.random.default_rng(s)) for s in range(4, 8)]
    assert a.shape == shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, x) for x in c)
    lo, hi = transforms.imagenet_normalize(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))[0]
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()


def _marker_centre(x):
    g = x[..., 0]
    mask = g > (g.max() + g.min()) / 2
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def test_pair_views_share_geometry():
    size = 64
    img = np.zeros((96, 96, 3), np.uint8)
    img[40:56, 30:46] = 255  # bright marker on black
    tf = D.CiplPairViewTransform(size)
    differ = 0
    for seed in range(12):
        x, x2 = tf(img, np.random.default_rng(seed))
        assert x.shape == x2.shape == (size, size, 3) and x.dtype == np.float32
        if (x[..., 0] > 1.0).sum() < 4 or (x2[..., 0] > 1.0).sum() < 4:
            continue  # marker cut away or erased (cutout/crop) in this draw
        # Same geometry up to the <= 5 % final crop (plus resize rounding).
        assert np.abs(_marker_centre(x) - _marker_centre(x2)).max() <= 0.06 * size
        differ += not np.array_equal(x, x2)
    assert differ > 0
    a = tf(img, np.random.default_rng(1))
    b = tf(img, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_pair_view_default_padding():
    assert D.CiplPairViewTransform(512).big == 544


def test_cipl_weights_match_loop():
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 5)) < 0.3).astype(np.float32)
    labels[labels.sum(1) == 0, 4] = 1
    cw = rng.uniform(1, 10, 5)
    got = D.cipl_image_weights(labels, cw)
    for i in range(30):
        pos = [c for c in range(5) if labels[i, c] == 1]
        assert got[i] == pytest.approx(sum(cw[c] for c in pos) / len(pos), rel=1e-6)
    raw = D.inverse_frequency_class_weights(labels)
    total = labels.sum()
    for c in range(5):
        assert raw[c] == pytest.approx(total / labels[:, c].sum(), rel=1e-6)


def test_image_without_labels_is_a_data_error():
    with pytest.raises(DataError, match="record 1"):
        D.cipl_image_weights(np.array([[1, 0], [0, 0]]), np.ones(2))


def test_pair_sampler_rule_matches_reference_distribution():
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)
    s = D.PairSampler(labels, seed=1)
    rows = np.concatenate([s.epoch(e) for e in range(800)])
    assert rows.shape == (800 * 5, 2)
    a, b = rows[:, 0], rows[:, 1]
    assert ((labels[a] * labels[b]).sum(1) > 0).all()  # every pair shares a label
    # Reference P(b | a) = sum over positive c of a: (1/|pos(a)|) * [b has c] / |members(c)|.
    for i in range(5):
        pos = np.flatnonzero(labels[i])
        ref = np.zeros(5)
        for c in pos:
            members = np.flatnonzero(labels[:, c])
            ref[members] += 1.0 / len(pos) / len(members)
        got = np.bincount(b[a == i], minlength=5) / (a == i).sum()
        np.testing.assert_allclose(got, ref, atol=0.05)


def test_pair_sampler_with_weights_uses_weighted_first_image():
    labels = np.eye(3, dtype=np.float32)
    s = D.PairSampler(labels, seed=0, weights=np.array([1.0, 0.0, 3.0]))
    rows = np.concatenate([s.epoch(e) for e in range(500)])
    np.testing.assert_array_equal(rows[:, 0], rows[:, 1])  # one image per label
    freq = np.bincount(rows[:, 0], minlength=3) / rows.shape[0]
    np.testing.assert_allclose(freq, [0.25, 0.0, 0.75], atol=0.03)

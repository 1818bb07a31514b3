"""Transforms vs PIL references, determinism, geometry sharing of the CIPL pair views."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from jaxproto.data import transforms as T
from jaxproto.data.records import Box


def _img(h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_imagenet_normalize():
    img = np.full((2, 2, 3), 255, np.uint8)
    out = T.imagenet_normalize(img)
    np.testing.assert_allclose(out[0, 0], (1 - T.IMAGENET_MEAN) / T.IMAGENET_STD, rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        T.imagenet_normalize(img.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        T.imagenet_normalize(img[..., 0])


@pytest.mark.parametrize("shape,size", [((40, 52), 24), ((30, 30), 64), ((97, 61), 50)])
def test_eval_transform_matches_pil_bilinear(shape, size):
    img = _img(*shape)
    ref = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR), np.float32)
    ref = (ref / 255.0 - T.IMAGENET_MEAN) / T.IMAGENET_STD
    out = T.eval_transform(img, size)
    assert out.shape == (size, size, 3) and out.dtype == np.float32
    # PIL rounds to uint8 between its two passes: at most 1 grey level apart.
    np.testing.assert_allclose(out, ref, atol=1.01 / 255 / T.IMAGENET_STD.min())


def test_shorter_side_resize_center_crop_matches_pil():
    img = _img(60, 90)
    pil = Image.fromarray(img).resize((42, 28), Image.BILINEAR)  # shorter side 28
    top, left = round((28 - 24) / 2), round((42 - 24) / 2)
    ref = np.asarray(pil, np.int32)[top : top + 24, left : left + 24]
    out = T.resize_shorter_center_crop(img, 28, 24)
    assert out.shape == (24, 24, 3)
    assert np.abs(out.astype(np.int32) - ref).max() <= 1


@pytest.mark.parametrize(
    "fn,enh",
    [
        (T.adjust_brightness, ImageEnhance.Brightness),
        (T.adjust_contrast, ImageEnhance.Contrast),
        (T.adjust_saturation, ImageEnhance.Color),
        (T.adjust_sharpness, ImageEnhance.Sharpness),
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
    diff = np.abs(T.adjust_hue(img, shift).astype(np.int32) - np.asarray(ref, np.int32))
    assert np.median(diff) <= 1 and np.percentile(diff, 99) <= 8  # two 8-bit HSV codecs
    np.testing.assert_array_equal(T.adjust_hue(img, 0.0), img)


def test_spline_basis_interpolates_control_points():
    a = T._spline_basis(3, 9)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a[[0, 4, 8]], np.eye(3), atol=1e-5)


def test_elastic_deform():
    img = _img(32, 32)
    rng = np.random.default_rng(0)
    same = T.elastic_deform(img, rng, sigma=0.0, grayscale=False)
    np.testing.assert_array_equal(same[2:-2, 2:-2], img[2:-2, 2:-2])
    a = T.elastic_deform(img, np.random.default_rng(1), sigma=8.0)
    b = T.elastic_deform(img, np.random.default_rng(1), sigma=8.0)
    np.testing.assert_array_equal(a, b)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    gray = np.round(T._gray(img)).astype(np.uint8)
    assert np.abs(a[..., 0].astype(int) - gray).mean() > 5  # it actually moved pixels


def test_cutout_abs():
    img = np.full((60, 60, 3), 200, np.uint8)
    out = T.cutout_abs(img, np.random.default_rng(0))
    zeros = (out == 0).all(-1)
    assert 0 < zeros.sum() <= 625
    assert (img == 200).all()  # input untouched


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(100, 140, rng, (0.5, 1.0), (0.75, 1.33))
        assert 0 <= top and 0 <= left and top + h <= 100 and left + w <= 140
        assert 0.5 * 14000 * 0.95 <= h * w <= 14000
        assert 0.7 <= w / h <= 1.4


def test_affine_matrix_against_closed_form():
    c = (10.0, 20.0)
    m = T.affine_matrix(0.0, (3.0, -2.0), 2.0, (0.0, 0.0), c)
    np.testing.assert_allclose(m, [[2, 0, -10 + 3], [0, 2, -20 - 2]], atol=1e-5)
    m = T.affine_matrix(90.0, (0.0, 0.0), 1.0, (0.0, 0.0), c)
    p = m @ np.array([11.0, 20.0, 1.0])  # a point right of the centre turns by 90 degrees
    np.testing.assert_allclose(np.abs(p - np.array(c)), [0, 1], atol=1e-5)
    m = T.affine_matrix(0.0, (0.0, 0.0), 1.0, (45.0, 0.0), (0.0, 0.0))
    np.testing.assert_allclose(m[:, :2], [[1, -1], [0, 1]], atol=1e-5)  # x-shear tan(45) = 1


@pytest.mark.parametrize(
    "tf,shape",
    [
        (T.CiplTrainTransform(48), (48, 48, 3)),
        (T.XmirTrainTransform(32, resize=36), (32, 32, 3)),
        (T.XmirTrainTransform(32, resize=36, rand_resize=True), (32, 32, 3)),
        (T.CsrTrainTransform(40), (40, 40, 3)),
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
    lo, hi = T.imagenet_normalize(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))[0]
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()


def test_csr_flips_only_horizontal_for_chest():
    img = np.zeros((8, 8, 3), np.uint8)
    img[0, 0] = 255  # top-left marker
    tf = T.CsrTrainTransform(8, vflip=False)
    for s in range(10):
        out = tf(img, np.random.default_rng(s))
        row, col = np.unravel_index(out[..., 0].argmax(), (8, 8))
        assert row == 0 and col in (0, 7)


def _marker_centre(x):
    g = x[..., 0]
    mask = g > (g.max() + g.min()) / 2
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def test_pair_views_share_geometry():
    size = 64
    img = np.zeros((96, 96, 3), np.uint8)
    img[40:56, 30:46] = 255  # bright marker on black
    tf = T.CiplPairViewTransform(size)
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
    assert T.CiplPairViewTransform(512).big == 544


def test_scale_boxes():
    out = T.scale_boxes([Box(2, 10, 20, 30, 40, True)], (100, 200), (50, 100))
    assert out == (Box(2, 5, 10, 15, 20, True),)

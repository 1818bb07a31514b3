"""X-MIR data: the PK sampler's structure, the shorter-side resize + centre crop against PIL,
and the train transform's determinism."""

import numpy as np
import pytest
from PIL import Image

from jaxproto.common.errors import DataError
from jaxproto.data.transforms import imagenet_normalize
from jaxproto.methods.xmir.data import PKSampler, TrainTransform, resize_shorter_center_crop


def _img(h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_pk_sampler_structure_and_epoch_length():
    labels = np.array([0] * 50 + [1] * 40 + [2] * 17 + [3] * 3)  # class 3 < K: dropped
    s = PKSampler(labels, P=3, K=4, seed=0)
    e = s.epoch(0)
    assert len(s) == e.size == (17 // 4) * 12  # ends when the smallest group runs out
    assert len(np.unique(e)) == e.size
    for batch in e.reshape(-1, 12):
        blocks = labels[batch].reshape(3, 4)
        assert (blocks == blocks[:, :1]).all()
        assert sorted(blocks[:, 0]) == [0, 1, 2]
    np.testing.assert_array_equal(e, PKSampler(labels, 3, 4, seed=0).epoch(0))
    assert not np.array_equal(e, s.epoch(1))


def test_pk_sampler_fewer_labels_per_batch_than_groups():
    labels = np.repeat(np.arange(4), [12, 8, 8, 20])
    s = PKSampler(labels, P=2, K=4, seed=5)
    for ep in range(5):
        e = s.epoch(ep)
        assert len(np.unique(e)) == e.size
        for batch in e.reshape(-1, 8):
            blocks = labels[batch].reshape(2, 4)
            assert (blocks == blocks[:, :1]).all() and blocks[0, 0] != blocks[1, 0]
        # Stops when fewer than P groups have K left: at most one group keeps >= K images.
        left = np.bincount(labels, minlength=4) - np.bincount(labels[e], minlength=4)
        assert (left >= 4).sum() < 2
    assert len(s) == s.epoch(0).size


def test_pk_sampler_errors():
    with pytest.raises(DataError, match="need P=3"):
        PKSampler(np.array([0] * 5 + [1] * 5 + [2] * 2), P=3, K=4, seed=0)
    with pytest.raises(ValueError, match="integer"):
        PKSampler(np.zeros(5, np.float32), P=1, K=1, seed=0)


def test_shorter_side_resize_center_crop_matches_pil():
    img = _img(60, 90)
    pil = Image.fromarray(img).resize((42, 28), Image.BILINEAR)  # shorter side 28
    top, left = round((28 - 24) / 2), round((42 - 24) / 2)
    ref = np.asarray(pil, np.int32)[top : top + 24, left : left + 24]
    out = resize_shorter_center_crop(img, 28, 24)
    assert out.shape == (24, 24, 3)
    assert np.abs(out.astype(np.int32) - ref).max() <= 1


@pytest.mark.parametrize("rand_resize", [False, True])
def test_train_transform_shape_dtype_determinism(rand_resize):
    tf = TrainTransform(32, resize=36, rand_resize=rand_resize)
    img = _img(64, 70)
    a = tf(img, np.random.default_rng(3))
    b = tf(img, np.random.default_rng(3))
    c = [tf(img, np.random.default_rng(s)) for s in range(4, 8)]
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, x) for x in c)
    lo, hi = imagenet_normalize(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))[0]
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()


def test_train_transform_without_random_crop_is_the_eval_crop_or_its_mirror():
    img = _img(50, 80)
    crop = imagenet_normalize(resize_shorter_center_crop(img, 36, 32))
    outs = [TrainTransform(32, resize=36)(img, np.random.default_rng(s)) for s in range(8)]
    for out in outs:
        assert np.array_equal(out, crop) or np.array_equal(out, crop[:, ::-1])
    assert any(np.array_equal(o, crop[:, ::-1]) for o in outs)

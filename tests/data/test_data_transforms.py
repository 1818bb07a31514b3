"""Generic transforms vs PIL references (normalisation, eval resize, crop boxes, box scaling)."""

import numpy as np
import pytest
from PIL import Image

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


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(100, 140, rng, (0.5, 1.0), (0.75, 1.33))
        assert 0 <= top and 0 <= left and top + h <= 100 and left + w <= 140
        assert 0.5 * 14000 * 0.95 <= h * w <= 14000
        assert 0.7 <= w / h <= 1.4


def test_scale_boxes():
    out = T.scale_boxes([Box(2, 10, 20, 30, 40, True)], (100, 200), (50, 100))
    assert out == (Box(2, 5, 10, 15, 20, True),)

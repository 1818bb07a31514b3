"""CSR's train transform and record checks (specs/csr.md §5, §7)."""

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import transforms
from jaxproto.data.records import Record
from jaxproto.methods.csr.data import CsrTrainTransform, concepts_of, target_of


def test_train_transform_shape_dtype_determinism():
    img = np.random.default_rng(0).integers(0, 255, (64, 70, 3), dtype=np.uint8)
    tf = CsrTrainTransform(40)
    a, b = tf(img, np.random.default_rng(3)), tf(img, np.random.default_rng(3))
    assert a.shape == (40, 40, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    outs = [tf(img, np.random.default_rng(s)) for s in range(4, 12)]
    assert any(not np.array_equal(a, x) for x in outs)
    lo, hi = transforms.imagenet_normalize(np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8))[0]
    assert (a >= lo - 1e-5).all() and (a <= hi + 1e-5).all()


@pytest.mark.parametrize("vflip", [False, True])
def test_flips(vflip):
    img = np.zeros((8, 8, 3), np.uint8)
    img[0, 0] = 255  # top-left marker
    corners = set()
    for s in range(16):
        out = CsrTrainTransform(8, vflip=vflip)(img, np.random.default_rng(s))
        corners.add(np.unravel_index(int(out[..., 0].argmax()), (8, 8)))
    want = {(0, 0), (0, 7), (7, 0), (7, 7)} if vflip else {(0, 0), (0, 7)}
    assert corners == want


def test_record_checks_name_the_record():
    rec = Record("r1", "/x/r1.png", np.zeros(3, np.float32), concepts=np.ones(2, np.float32))
    with pytest.raises(DataError, match="r1.*no positive class"):
        target_of(rec)
    with pytest.raises(DataError, match="r1.*expected a vector of 3"):
        concepts_of(rec, 3)
    assert concepts_of(rec, 2).dtype == np.float32

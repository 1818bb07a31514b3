"""Synthetic datasets (procedural pixels + named index): determinism, label/box/concept
consistency, Clever-Hans marker, decoding through images.load_image, CLI."""

import cv2
import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import images
from jaxproto.data import procedural as P
from jaxproto.data import synthetic as S


@pytest.mark.parametrize("like", sorted(S.LIKES))
def test_render_is_pure_and_consistent(like):
    spec = S.LIKES[like]
    for index in range(6):
        img, labels, boxes, concepts = P.render(like, 3, index, 64)
        img2, labels2, boxes2, _ = P.render(like, 3, index, 64)
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(labels, labels2)
        assert boxes == boxes2
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert labels.shape == (len(spec.class_names),) and labels.dtype == np.float32
        assert labels.sum() >= 1 and (spec.multilabel or labels.sum() == 1)
        if spec.style == "cxr":
            assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
        for b in boxes:
            assert 0 <= b.x and 0 <= b.y and b.x + b.w <= 64 and b.y + b.h <= 64 and b.w >= 3
        if spec.concept_names:
            assert concepts.shape == (len(spec.concept_names),)
            if like != "vindr":
                assert P.task_from_concepts(like, concepts) == labels.argmax()
        else:
            assert concepts is None
        if spec.background_class is not None and spec.multilabel:
            # background iff no finding boxes
            assert (labels[spec.background_class] == 1) == (len(boxes) == 0)
            assert {b.label for b in boxes} == set(np.flatnonzero(labels)) - {spec.background_class}
    other = P.render(like, 3, 0, 64)[0]
    assert not np.array_equal(other, P.render(like, 4, 0, 64)[0])


def test_geometry_scales_with_size():
    _, _, small, _ = P.render("chestxray14", 0, 1, 64)
    _, _, big, _ = P.render("chestxray14", 0, 1, 256)
    assert len(small) == len(big) > 0
    for a, b in zip(small, big, strict=True):
        assert a.label == b.label
        assert abs(a.x * 4 - b.x) <= 4 and abs(a.w * 4 - b.w) <= 6


@pytest.mark.parametrize("name", sorted(P.PATTERNS))
def test_patterns_fill_their_box(name):
    # The patch rectangle is the tight box: every border row/column has some coverage.
    for side in (12, 19, 32):
        m = pattern_mask = P.pattern_mask(name, side, side)
        assert pattern_mask.shape == (side, side) and m.min() >= 0 and m.max() <= 1
        for edge in (m[0], m[-1], m[:, 0], m[:, -1]):
            assert edge.max() > 0.25, (name, side)
        assert 0.1 < m.mean() < 0.95


def test_lesions_are_visible_inside_their_boxes():
    # The planted pattern changes the image inside its box relative to a ring around it.
    for index in range(20):
        img, _, boxes, _ = P.render("tbx11k", 1, index, 128)
        g = img[..., 0].astype(np.float32)
        for b in boxes:
            x, y, w, h = int(b.x), int(b.y), int(b.w), int(b.h)
            inside = g[y : y + h, x : x + w]
            assert inside.std() > 15 or abs(inside.mean() - g.mean()) > 30


def test_patterns_are_separable_by_nearest_centroid():
    """A nearest-centroid rule on the lesion crops tells the 14 findings apart (learnability)."""
    crops, ys = [], []
    for index in range(500):
        img, _, boxes, _ = P.render("chestxray14", 0, index, 96)
        for b in boxes:
            x, y, w, h = int(b.x), int(b.y), int(b.w), int(b.h)
            crop = cv2.resize(img[y : y + h, x : x + w, 0], (12, 12), interpolation=cv2.INTER_AREA)
            crop = crop.astype(np.float32).ravel()
            crops.append((crop - crop.mean()) / (crop.std() + 1e-6))
            ys.append(b.label)
    X, y = np.array(crops), np.array(ys)
    half = len(ys) // 2
    assert set(y[:half]) == set(range(14))
    centroids = np.stack([X[:half][y[:half] == c].mean(0) for c in range(14)])
    pred = ((X[half:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y[half:]).mean() > 0.9


def test_paths_roundtrip_and_errors():
    path = P.make_path("odir", 2, 17, 48, hans=True)
    assert path == "synthetic://odir/2/17?size=48&hans=1"
    assert P.parse_path(path) == ("odir", 2, 17, 48, True)
    np.testing.assert_array_equal(P.render_path(path), P.render("odir", 2, 17, 48, True)[0])
    for bad in ("file:///x.png", "synthetic://odir/2?size=4", "synthetic://odir/2/1",
                "synthetic://nope/1/1?size=32", "synthetic://odir/1/1?size=32&x=2"):  # fmt: skip
        with pytest.raises(DataError):
            P.parse_path(bad)
    with pytest.raises(ValueError, match="unknown synthetic"):
        P.render("nope", 0, 0, 32)


def test_load_image_decodes_synthetic_paths_through_procedural():
    path = P.make_path("tbx11k", 1, 3, 40)
    np.testing.assert_array_equal(images.load_image(path), P.render("tbx11k", 1, 3, 40)[0])
    grey = images.load_image(path, channels=1)
    assert grey.shape == (40, 40, 1)
    np.testing.assert_array_equal(grey[..., 0], P.render("tbx11k", 1, 3, 40)[0][..., 0])
    assert images.image_size(P.make_path("odir", 0, 0, 24)) == (24, 24)
    with pytest.raises(DataError, match="malformed synthetic path"):
        images.load_image("synthetic://odir/1?size=32")


def test_names_match_the_rendered_counts():
    for like, spec in S.LIKES.items():
        assert spec.look is P.LOOKS[like]
        assert len(spec.class_names) == P.LOOKS[like].num_classes
    with pytest.raises(ValueError, match="the look renders 15 / 0"):
        S.LikeSpec(["a"], True, [], P.LOOKS["chestxray14"])


def _cfg(**kw):
    base = {"like": "chestxray14", "num_train": 300, "num_test": 60, "image_size": 32, "seed": 5}
    base.update(kw)
    return base


def test_index_splits_and_records():
    idx = S.synthetic_index(_cfg(num_val=10, images_per_patient=3))
    assert set(idx.splits) == {"train", "test", "val"}
    assert [len(idx.split(s)) for s in ("train", "test", "val")] == [300, 60, 10]
    assert idx.background_class == 14 and idx.num_classes == 15 and idx.multilabel
    recs = [r for s in idx.splits.values() for r in s]
    assert len({r.path for r in recs}) == len({r.image_id for r in recs}) == 370
    r = idx.split("test")[4]
    img, labels, boxes, _ = P.render("chestxray14", 5, r.meta["index"], 32)
    np.testing.assert_array_equal(r.labels, labels)
    assert r.boxes == boxes and r.size == (32, 32)
    assert r.patient_id == idx.split("test")[5].patient_id != idx.split("test")[6].patient_id
    # No Finding is the most frequent class, all findings occur.
    counts = np.sum([r.labels for r in idx.split("train")], axis=0)
    assert counts.argmax() == 14 and (counts > 0).all()
    assert "val" not in S.synthetic_index(_cfg()).splits


def test_clever_hans_marker():
    idx = S.synthetic_index(_cfg(like="tbx11k", clever_hans=True, hans_class=2, num_test=200))
    for r in idx.split("train"):
        assert r.meta["hans"] == bool(r.labels[2] == 1)
        assert ("hans=1" in r.path) == r.meta["hans"]
    test = idx.split("test")
    marks = np.array([r.meta["hans"] for r in test])
    is_tb = np.array([r.labels[2] == 1 for r in test])
    assert 0.35 < marks.mean() < 0.65
    assert marks[is_tb].mean() < 0.9 and marks[~is_tb].mean() > 0.1  # independent of the class
    marked = P.render_path(next(r.path for r in test if r.meta["hans"]))
    assert marked[2:3, 2:3].min() > 200  # the bright top-left square
    with pytest.raises(ValueError, match="hans_class"):
        S.synthetic_index(_cfg(clever_hans=True, hans_class=15))


def test_clever_hans_marker_by_concept():
    idx = S.synthetic_index(_cfg(like="tbx11k", clever_hans=True, hans_concept=3, num_test=200))
    train = idx.split("train")
    marks = np.array([r.meta["hans"] for r in train])
    assert marks.any() and not marks.all()
    for r in train:
        assert r.meta["hans"] == bool(r.concepts[3] == 1) == ("hans=1" in r.path)
    marks = np.array([r.meta["hans"] for r in idx.split("test")])
    assert 0.35 < marks.mean() < 0.65  # evaluation images: a random half, as by class
    half = S.synthetic_index(
        _cfg(like="tbx11k", clever_hans=True, hans_concept=3, hans_fraction=0.5)
    ).split("train")
    has = np.array([r.concepts[3] == 1 for r in train])
    half_marks = np.array([r.meta["hans"] for r in half])
    assert not half_marks[~has].any() and 0.35 < half_marks[has].mean() < 0.65
    with pytest.raises(ValueError, match="hans_concept"):
        S.synthetic_index(_cfg(like="tbx11k", clever_hans=True, hans_concept=5))
    with pytest.raises(ValueError, match="hans_fraction"):
        S.synthetic_index(_cfg(like="tbx11k", clever_hans=True, hans_fraction=0.0))


def test_index_config_errors():
    with pytest.raises(ValueError, match="num_train"):
        S.synthetic_index(_cfg(num_train=0))
    with pytest.raises(ValueError, match="unknown synthetic"):
        S.synthetic_index(_cfg(like="mnist"))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        S.main(["--help"])
    assert e.value.code == 0
    assert "--like" in capsys.readouterr().out


# The Med-MICN concept looks are written by jaxproto.data.synthetic_concepts (tested with
# Med-MICN, tests/methods/medmicn/test_medmicn_data.py).
@pytest.mark.parametrize("like", sorted(set(S.LIKES) - set(P.CONCEPT_RULES)))
def test_cli_output_reads_back_with_the_real_loader(like, tmp_path):
    pytest.importorskip("jaxproto.data.write_real_format")
    from jaxproto.data import registry
    from jaxproto.data.records import BadSampleReport

    S.main(["--like", like, "--num", "8", "--num-test", "4", "--out", str(tmp_path),
            "--image-size", "32", "--seed", "2"])  # fmt: skip
    cfg = registry.default_data_config(like)
    cfg.root = str(tmp_path)
    loaded = registry.load_index(cfg, BadSampleReport("error"))
    src = S.synthetic_index({"like": like, "num_train": 8, "num_test": 4, "image_size": 32,
                             "seed": 2})  # fmt: skip
    assert loaded.class_names == src.class_names
    labels = lambda idx: sorted(tuple(r.labels) for rs in idx.splits.values() for r in rs)  # noqa: E731
    assert labels(loaded) == labels(src)

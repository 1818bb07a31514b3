"""Each dataset loader end to end on a folder written in the dataset's published layout."""

from __future__ import annotations

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import write_real_format
from jaxproto.data.images import load_image
from jaxproto.data.records import BadSampleReport, Box, DatasetIndex, Record, multi_hot
from jaxproto.data.registry import default_data_config, load_index

SIZE = 24


def _image(r: Record, channels: int = 3) -> np.ndarray:
    seed = int.from_bytes(r.image_id.encode()[-6:], "little")
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, channels), dtype=np.uint8)


def _rec(image_id, classes, num, patient="", boxes=(), concepts=None, **meta):
    return Record(
        image_id=image_id,
        path="",
        labels=multi_hot(classes, num),
        boxes=tuple(boxes),
        concepts=None if concepts is None else np.asarray(concepts, np.float32),
        patient_id=patient,
        meta=meta,
    )


def _load(name, root, **fields):
    cfg = default_data_config(name)
    cfg.root = str(root)
    cfg.update(fields)
    return load_index(cfg, BadSampleReport())


def _by_id(index):
    return {r.image_id: (s, r) for s, recs in index.splits.items() for r in recs}


def _check_same(written: DatasetIndex, loaded: DatasetIndex, split_map=None, id_map=None):
    got = _by_id(loaded)
    for split, recs in written.splits.items():
        for r in recs:
            key = (id_map or {}).get(r.image_id, r.image_id)
            assert key in got, f"{key} missing from loaded index"
            s, lr = got[key]
            if split_map is not None:
                assert s == split_map.get(split, split)
            np.testing.assert_array_equal(lr.labels, r.labels)
            assert [(b.label, b.is_concept) for b in lr.boxes] == [
                (b.label, b.is_concept) for b in r.boxes
            ]
            for lb, b in zip(lr.boxes, r.boxes, strict=True):
                np.testing.assert_allclose([lb.x, lb.y, lb.w, lb.h], [b.x, b.y, b.w, b.h])
            if r.boxes:
                assert lr.size == (SIZE, SIZE)
    assert len(got) == sum(len(v) for v in written.splits.values())


def test_chestxray14_end_to_end(tmp_path):
    from jaxproto.data.chestxray14 import class_names

    names = class_names()
    n = len(names)
    train = [
        _rec("00000001_000.png", [0, 3], n, "1", [Box(3, 1.5, 2.0, 5.0, 6.0)]),
        _rec("00000001_001.png", [14], n, "1"),
        _rec("00000002_000.png", [13], n, "2"),
        _rec("00000003_000.png", [14], n, "3"),
    ]
    test = [_rec("00000004_000.png", [1], n, "4", [Box(1, 3.0, 4.0, 8.0, 9.0)])]
    index = DatasetIndex("chestxray14", names, {"train": train, "test": test})
    write_real_format.write("chestxray14", index, _image, str(tmp_path))
    assert (tmp_path / "images_001" / "images" / "00000001_000.png").is_file()
    loaded = _load("chestxray14", tmp_path)
    assert loaded.class_names[14] == "No Finding" and loaded.background_class == 14
    _check_same(index, loaded, split_map={})
    r = loaded.splits["train"][0]
    np.testing.assert_array_equal(load_image(r.path), _image(r))


def _write_chestxray14(root, patients: int, images: int) -> list:
    """A ChestX-ray14 folder: patients 1..N with 1..``images`` images each (patient p has
    p % images + 1) in train, one test image of patient 99; returns the train records."""
    from jaxproto.data.chestxray14 import class_names

    n = len(class_names())
    train = [
        _rec(f"{p:08d}_{k:03d}.png", [p % 14], n, str(p))
        for p in range(1, patients + 1)
        for k in range(p % images + 1)
    ]
    test = [_rec("00000099_000.png", [14], n, "99")]
    index = DatasetIndex("chestxray14", class_names(), {"train": train, "test": test})
    write_real_format.write("chestxray14", index, _image, str(root))
    return train


def test_chestxray14_patient_wise_val(tmp_path):
    train = _write_chestxray14(tmp_path, patients=20, images=3)
    loaded = _load("chestxray14", tmp_path, val_fraction=0.3, seed=3)
    patients = {s: {r.patient_id for r in recs} for s, recs in loaded.splits.items()}
    assert patients["val"] and patients["train"]
    assert not patients["val"] & patients["train"]
    assert not patients["test"] & (patients["val"] | patients["train"])
    assert sum(len(v) for v in loaded.splits.values()) == len(train) + 1
    frac = len(loaded.splits["val"]) / len(train)
    assert 0.1 < frac < 0.5
    again = _load("chestxray14", tmp_path, val_fraction=0.3, seed=3)
    assert [r.image_id for r in again.splits["val"]] == [r.image_id for r in loaded.splits["val"]]


def test_default_val_split_is_patient_wise(tmp_path):
    """The validation protocol's default (data.val_fraction auto): 10 % of the training patients
    (ChestX-ray14 has no official val list), disjoint from train; the paper protocol's (0) none,
    with the training set then whole."""
    from jaxproto.data.loading import AUTO, AUTO_VAL_FRACTION

    train = _write_chestxray14(tmp_path, patients=40, images=4)
    assert default_data_config("chestxray14").val_fraction == AUTO
    loaded = _load("chestxray14", tmp_path)
    patients = {s: {r.patient_id for r in recs} for s, recs in loaded.splits.items()}
    assert patients["val"] and not patients["val"] & patients["train"]
    assert len(loaded.splits["train"]) + len(loaded.splits["val"]) == len(train)
    frac = len(loaded.splits["val"]) / len(train)
    assert abs(frac - AUTO_VAL_FRACTION) < 0.05, frac
    paper = _load("chestxray14", tmp_path, val_fraction=0.0)
    assert "val" not in paper.splits and len(paper.splits["train"]) == len(train)


def test_odir_end_to_end(tmp_path):
    from jaxproto.data.odir import CLASS_NAMES

    n = len(CLASS_NAMES)
    train = [
        _rec("a", [0, 1], n, "1", eye="left"), _rec("b", [7], n, "1", eye="right"),
        _rec("c", [6], n, "2", eye="left"), _rec("d", [5, 2], n, "3", eye="right"),
    ]  # fmt: skip
    test = [_rec("e", [3], n, "7", eye="left"), _rec("f", [4], n, "7", eye="right")]
    offsite = [_rec("g", [7], n, "9", eye="left")]
    index = DatasetIndex("odir", CLASS_NAMES, {"train": train, "test": test, "offsite": offsite})
    write_real_format.write("odir", index, _image, str(tmp_path))
    assert (tmp_path / "Training Set" / "Images_crop" / "1_left.jpg").is_file()
    loaded = _load("odir", tmp_path)
    assert loaded.background_class == 7
    ids = {"a": "1_left.jpg", "b": "1_right.jpg", "c": "2_left.jpg", "d": "3_right.jpg",
           "e": "7_left.jpg", "f": "7_right.jpg", "g": "9_left.jpg"}  # fmt: skip
    _check_same(index, loaded, split_map={}, id_map=ids)
    # [all left; all right], patient 2's and 3's missing eyes ("no fundus image") dropped.
    assert [r.image_id for r in loaded.splits["train"]] == [
        "1_left.jpg",
        "2_left.jpg",
        "1_right.jpg",
        "3_right.jpg",
    ]


def test_covidx_end_to_end(tmp_path):
    classes = ["normal", "pneumonia", "COVID-19"]
    train = [_rec(f"CR.1.2.840.{k}.png", [k % 3], 3, f"p{k}") for k in range(5)]
    test = [_rec(f"1-s2.0-S09{k}-gr2_lrg-a.jpg", [k % 3], 3, f"q{k}") for k in range(3)]
    index = DatasetIndex("covidx", classes, {"train": train, "test": test}, multilabel=False)
    write_real_format.write("covidx", index, _image, str(tmp_path))
    lines = (tmp_path / "train_split.txt").read_text().splitlines()
    assert {len(x.split()) for x in lines} == {3, 4}
    loaded = _load("covidx", tmp_path)
    assert not loaded.multilabel and loaded.background_class == 0
    _check_same(index, loaded, split_map={})


def test_isic2017_end_to_end(tmp_path):
    from jaxproto.data.isic import CLASS_NAMES

    def rec(k, c):
        return _rec(f"ISIC_{k:07d}", [c], 3, concepts=[k % 2, 1, 0, (k // 2) % 2])

    index = DatasetIndex("isic2017", CLASS_NAMES, {
        "train": [rec(k, k % 3) for k in range(6)], "val": [rec(10, 1)],
        "test": [rec(20 + k, k) for k in range(3)]}, multilabel=False)  # fmt: skip
    write_real_format.write("isic2017", index, _image, str(tmp_path))
    assert (tmp_path / "ISIC-2017_Training_Data" / "ISIC_0000000_superpixels.png").is_file()
    assert b"\r\n" in (tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv").read_bytes()
    loaded = _load("isic2017", tmp_path, isic_concepts=True)
    _check_same(index, loaded, split_map={})
    got = _by_id(loaded)
    for r in index.splits["train"]:
        np.testing.assert_array_equal(got[r.image_id][1].concepts, r.concepts)
        assert got[r.image_id][1].path.endswith(".jpg")


def test_tbx11k_end_to_end(tmp_path):
    from jaxproto.data.tbx11k import CLASS_NAMES, CONCEPT_NAMES

    def rec(k, c, boxes=()):
        return _rec(f"x{k}", [c], 3, boxes=boxes)

    train = [
        rec(0, 0),
        rec(1, 1),
        rec(2, 2, [Box(0, 1.0, 2.0, 3.0, 4.0, True), Box(1, 5.0, 6.0, 7.0, 8.0, True)]),
        rec(3, 2),
    ]
    val = [rec(4, 2, [Box(2, 2.0, 2.0, 4.0, 4.0, True)]), rec(5, 0)]
    index = DatasetIndex("tbx11k", CLASS_NAMES, {"train": train, "val": val}, multilabel=False)
    write_real_format.write("tbx11k", index, _image, str(tmp_path))
    loaded = _load("tbx11k", tmp_path)
    assert sorted(loaded.splits) == ["test", "train"]
    assert loaded.concept_names == CONCEPT_NAMES
    ids = {f"x{k}": n for k, n in enumerate(
        ["health/h0001.png", "sick/s0002.png", "tb/tb0003.png", "tb/tb0004.png",
         "tb/tb0005.png", "health/h0006.png"])}  # fmt: skip
    _check_same(index, loaded, split_map={"val": "test"}, id_map=ids)
    got = _by_id(loaded)
    np.testing.assert_array_equal(got["tb/tb0003.png"][1].concepts, [1, 1, 0])
    np.testing.assert_array_equal(got["tb/tb0004.png"][1].concepts, [0, 0, 0])


def test_vindr_end_to_end(tmp_path):
    from jaxproto.data.vindr import KAGGLE_CLASSES

    n = len(KAGGLE_CLASSES)
    recs = [
        _rec(f"{k:032x}", [k % 14], n, boxes=[Box(k % 14, 1.0, 2.0, 5.0 + k, 6.0)])
        for k in range(6)
    ] + [_rec(f"{99:032x}", [14], n)]
    index = DatasetIndex("vindr", KAGGLE_CLASSES, {"train": recs})
    write_real_format.write("vindr", index, lambda r: _image(r, 1), str(tmp_path))
    loaded = _load("vindr", tmp_path, test_fraction=0.3)
    assert sorted(loaded.splits) == ["test", "train"] and loaded.background_class == 14
    _check_same(index, loaded)
    r = _by_id(loaded)[f"{3:032x}"][1]
    np.testing.assert_array_equal(r.concepts, r.labels[:14])
    img = load_image(r.path, channels=1)[:, :, 0].astype(np.float32)
    ref = _image(r, 1)[:, :, 0].astype(np.float32)
    want = np.rint((ref - ref.min()) / (ref.max() - ref.min()) * 255)
    np.testing.assert_array_equal(img, want)


def test_ddi_end_to_end(tmp_path):
    from jaxproto.data.ddi import CLASS_NAMES, CONCEPT_NAMES

    rng = np.random.default_rng(0)
    recs = [
        _rec(
            f"{k:06d}.png",
            [k % 2],
            2,
            concepts=rng.integers(0, 2, len(CONCEPT_NAMES)),
            skin_tone="34",
        )
        for k in range(1, 21)
    ]
    index = DatasetIndex("ddi", CLASS_NAMES, {"train": recs}, multilabel=False)
    write_real_format.write("ddi", index, _image, str(tmp_path))
    loaded = _load("ddi", tmp_path, test_fraction=0.25)
    assert len(loaded.splits["test"]) == 5 and loaded.concept_names == CONCEPT_NAMES
    _check_same(index, loaded)
    got = _by_id(loaded)
    for r in recs:
        np.testing.assert_array_equal(got[r.image_id][1].concepts, r.concepts)


def test_ham10000_lesion_split(tmp_path):
    from jaxproto.data.ham10000 import CLASS_NAMES

    # Two images per lesion, both with the lesion's diagnosis.
    recs = [
        _rec(f"ISIC_{k:07d}", [(k // 2) % 7], 7, patient=f"HAM_{k // 2:07d}") for k in range(70)
    ]
    index = DatasetIndex("ham10000", CLASS_NAMES, {"train": recs}, multilabel=False)
    write_real_format.write("ham10000", index, _image, str(tmp_path))
    loaded = _load("ham10000", tmp_path, ham_fractions=[0.6, 0.2])
    _check_same(index, loaded)
    lesions = {s: {r.patient_id for r in v} for s, v in loaded.splits.items()}
    assert not lesions["train"] & lesions["val"] and not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]
    by_image = _load("ham10000", tmp_path, ham_split_by="image", ham_fractions=[0.6, 0.2])
    assert sum(map(len, by_image.splits.values())) == 70


def test_empty_split_is_error(tmp_path):
    from jaxproto.data.chestxray14 import class_names

    n = len(class_names())
    index = DatasetIndex("chestxray14", class_names(), {
        "train": [_rec("00000001_000.png", [0], n, "1")], "test": []})  # fmt: skip
    write_real_format.write("chestxray14", index, _image, str(tmp_path))
    with pytest.raises(DataError, match="split 'test' is empty"):
        _load("chestxray14", tmp_path)

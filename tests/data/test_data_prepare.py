"""ArrayRecord fast path: the prepared index equals the raw one; images equal decode+resize."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import write_real_format
from jaxproto.data.images import load_image
from jaxproto.data.prepare import main, prepare, resize_image
from jaxproto.data.prepared import PreparedSource, load_prepared_index
from jaxproto.data.records import BadSampleReport, Box, DatasetIndex, Record, multi_hot
from jaxproto.data.registry import default_data_config, load_index


def _tbx_folder(root):
    from jaxproto.data.tbx11k import CLASS_NAMES

    rng = np.random.default_rng(0)

    def rec(k, c, boxes=()):
        return Record(f"r{k}", "", multi_hot([c], 3), tuple(boxes))

    index = DatasetIndex(
        "tbx11k",
        CLASS_NAMES,
        {
            "train": [rec(0, 0), rec(1, 2, [Box(0, 3.0, 4.0, 5.0, 6.0, True)]), rec(2, 1)],
            "val": [rec(3, 2, [Box(1, 1.0, 1.0, 9.0, 9.0, True)]), rec(4, 0)],
        },
        multilabel=False,
    )
    sizes = {"r0": (30, 20), "r1": (17, 25), "r2": (16, 16), "r3": (40, 33), "r4": (12, 20)}
    images = {k: rng.integers(0, 256, (*s, 3), dtype=np.uint8) for k, s in sizes.items()}
    write_real_format.write("tbx11k", index, lambda r: images[r.image_id], str(root))
    cfg = default_data_config("tbx11k")
    cfg.root = str(root)
    return cfg


def test_prepared_equals_raw(tmp_path):
    cfg = _tbx_folder(tmp_path / "raw")
    raw = load_index(cfg, BadSampleReport())
    prepare(cfg, str(tmp_path / "prep"), 16)
    prep = load_prepared_index(str(tmp_path / "prep"))
    assert (prep.name, prep.class_names, prep.concept_names, prep.background_class) == (
        raw.name,
        raw.class_names,
        raw.concept_names,
        raw.background_class,
    )
    assert sorted(prep.splits) == sorted(raw.splits)
    for split, recs in raw.splits.items():
        src = PreparedSource(str(tmp_path / "prep"), split)
        assert len(src) == len(recs) and repr(src) == repr(pickle.loads(pickle.dumps(src)))
        for i, (r, p) in enumerate(zip(recs, prep.splits[split], strict=True)):
            assert (p.image_id, p.patient_id, p.boxes, p.size) == (
                r.image_id,
                r.patient_id,
                r.boxes,
                r.size,
            )
            np.testing.assert_array_equal(p.labels, r.labels)
            np.testing.assert_array_equal(p.concepts, r.concepts)
            want = resize_image(load_image(r.path), 16)
            np.testing.assert_array_equal(load_image(p.path), want)
            np.testing.assert_array_equal(src[i]["image"], want)
        with pytest.raises(IndexError):
            src[len(recs)]
    cfg.prepared = str(tmp_path / "prep")
    assert [r.path for r in load_index(cfg, BadSampleReport()).splits["test"]] == [
        r.path for r in prep.splits["test"]
    ]


def test_resize_matches_numpy_bilinear():
    img = np.random.default_rng(2).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    out = resize_image(img, 8)
    # Half-pixel-centre bilinear: output pixel (1, 1) samples input (0.25, 0.25) -> clamped edge
    # rows/cols; pixel (3, 3) samples (1.25, 1.25): 0.75*0.75*a + ... of the 2x2 block at (1, 1).
    a = img[1:3, 1:3].astype(np.float64)
    w = np.array([0.75, 0.25])
    want = np.einsum("i,j,ijc->c", w, w, a)
    np.testing.assert_allclose(out[3, 3], want, atol=1)


def test_cli_and_missing_manifest(tmp_path):
    _tbx_folder(tmp_path / "raw")
    main(
        [
            "--dataset",
            "tbx11k",
            "--root",
            str(tmp_path / "raw"),
            "--image-size",
            "8",
            "--out",
            str(tmp_path / "prep"),
        ]
    )
    prep = load_prepared_index(str(tmp_path / "prep"))
    assert load_image(prep.splits["train"][0].path).shape == (8, 8, 3)
    with pytest.raises(DataError, match="manifest.json: not found"):
        load_prepared_index(str(tmp_path / "nothing"))

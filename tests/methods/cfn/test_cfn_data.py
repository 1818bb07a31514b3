"""Split-pickle reader (safe), MIMIC keys, and the primitives-with-reports generator."""

import os
import pickle

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import class2images, primitives, registry
from jaxproto.data.records import BadSampleReport


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_split_pickle_refuses_globals(tmp_path):
    p = tmp_path / "class2images_train.p"
    p.write_bytes(pickle.dumps({"a": ["x.jpg"], "b": _Evil()}))
    with pytest.raises(DataError, match="refusing global"):
        class2images.read_split_pickle(str(p))
    p.write_bytes(pickle.dumps({"a": "x.jpg"}))
    with pytest.raises(DataError, match="list of str"):
        class2images.read_split_pickle(str(p))
    p.write_bytes(pickle.dumps({"a": ["x.jpg", "y.jpg"]}))
    assert class2images.read_split_pickle(str(p)) == {"a": ["x.jpg", "y.jpg"]}


def _write(root, tables, reports=None):
    os.makedirs(root / "images", exist_ok=True)
    for split, table in tables.items():
        class2images.write_split_pickle(str(root / f"class2images_{split}.p"), table)
        for paths in table.values():
            for rel in paths:
                (root / "images" / rel).write_bytes(b"")


def test_mimic_keys_need_a_mimic_cxr_component(tmp_path):
    root = tmp_path / "mimic_cxr"
    tables = {s: {"101": [f"{s}1.jpg"], "000": [f"{s}2.jpg"]} for s in class2images.SPLITS}
    _write(root, tables)
    cfg = registry.default_data_config("class2images")
    cfg.root = str(root)
    index = class2images.load(cfg, BadSampleReport())
    assert index.multilabel and index.num_classes == 3
    rec = [r for r in index.splits["val"] if r.image_id == "val1.jpg"][0]
    np.testing.assert_array_equal(rec.labels, [1, 0, 1])
    other = tmp_path / "other"
    _write(other, tables)
    cfg.root = str(other)
    with pytest.raises(DataError, match="not in data.class_names"):
        _strict(cfg)


def _strict(cfg):
    cfg.class_names = ["000"]
    return class2images.load(cfg, BadSampleReport())


def test_primitives_dataset_is_deterministic_with_reports(tmp_path):
    cfg = registry.default_data_config("primitives")
    cfg.update({"image_size": 32, "num_train": 12, "num_val": 4, "num_test": 4})
    cfg.cache_dir = str(tmp_path)
    index = registry.load_index(cfg, BadSampleReport())
    relevant, distractors = primitives.primitive_names("ham10000")
    assert index.concept_names == relevant + distractors
    for r in index.splits["train"]:
        labels, present, text = primitives.sample("ham10000", 0, int(r.image_id[6:12]), 0.35)
        np.testing.assert_array_equal(r.labels, labels)
        names = [index.concept_names[i] for i in np.flatnonzero(r.concepts)]
        assert sorted(names) == sorted(p.name for p in present)
        assert all(n in r.meta["report"] for n in names)
        assert relevant[int(labels.argmax())] in names  # the class's signature primitive
    a = primitives.render("mimic", 0, 3, 32, 0.35)
    np.testing.assert_array_equal(a, primitives.render("mimic", 0, 3, 32, 0.35))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)

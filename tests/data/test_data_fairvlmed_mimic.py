"""Harvard-FairVLMed (npz + clinical notes) and R2Gen MIMIC-CXR (annotation.json + CheXpert
table) loaders on files written in the published layouts, including bad inputs (one clear error
naming the file and entry or line) and the CFN configs that default to them."""

import json
import os
import shutil

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data import fairvlmed, mimic_cxr, registry, write_cfn_formats
from jaxproto.data.images import load_image
from jaxproto.data.records import BadSampleReport
from jaxproto.methods.cfn import config as cfn_config


def _fundus(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (24, 20), dtype=np.uint8)


def _fair_samples():
    out = []
    for i, split in enumerate(["train"] * 3 + ["val"] * 2 + ["test"] * 2):
        note = f"patient {i}: {'cup to disc 0.8 glaucoma' if i % 2 else 'healthy optic nerve'}"
        out.append({"split": split, "id": 8000 + i, "image": _fundus(i), "glaucoma": i % 2})
        out[-1]["note"] = note
    return out


def _cfg(name, root, **kw):
    cfg = registry.default_data_config(name)
    cfg.root = str(root)
    cfg.update(kw)
    return cfg


def _fair_cfg(root, **kw):
    return _cfg("fairvlmed", root, **kw)


def test_fairvlmed_reads_the_published_layout(tmp_path):
    samples = _fair_samples()
    write_cfn_formats.write_fairvlmed(str(tmp_path), samples)
    index = fairvlmed.load(_fair_cfg(tmp_path), BadSampleReport())
    assert [len(index.splits[s]) for s in ("train", "val", "test")] == [3, 2, 2]
    assert index.class_names == ["no", "yes"] and not index.multilabel
    for r, s in zip(index.splits["test"], samples[5:], strict=True):
        assert r.image_id == f"data_{s['id']:05d}" and r.meta["report"] == s["note"]
        np.testing.assert_array_equal(r.labels, np.eye(2)[s["glaucoma"]])
        assert r.path.endswith(f"slo_fundus_png/Test/slo_fundus_{s['id']:05d}.png")
        np.testing.assert_array_equal(load_image(r.path, channels=1)[:, :, 0], s["image"])
        assert r.meta["race"] == 0 and r.meta["gender"] == 1
    # the README's "Testing" folder name, another text field and PNG folder
    os.rename(tmp_path / "Test", tmp_path / "Testing")
    for s in samples:
        s["note_extra"] = "asian, male: " + s["note"]
    write_cfn_formats.write_fairvlmed(str(tmp_path / "x"), samples)
    shutil.rmtree(tmp_path / "x")
    cfg = _fair_cfg(tmp_path, fairvlmed_png_dir=str(tmp_path / "png"))
    index = fairvlmed.load(cfg, BadSampleReport())
    assert index.splits["test"][0].path.startswith(str(tmp_path / "png" / "Testing"))


def test_fairvlmed_bad_inputs_name_the_file(tmp_path):
    samples = _fair_samples()
    paths = write_cfn_formats.write_fairvlmed(str(tmp_path), samples)
    data = dict(np.load(paths[1]))
    data["glaucoma"] = np.int64(2)
    np.savez(paths[1], **data)
    with pytest.raises(DataError, match=r"data_08001\.npz: glaucoma is 2, expected 0 or 1"):
        fairvlmed.load(_fair_cfg(tmp_path), BadSampleReport())
    del data["note"]
    data["glaucoma"] = np.int64(1)
    np.savez(paths[1], **data)
    with pytest.raises(DataError, match=r"data_08001\.npz: field 'note' missing"):
        fairvlmed.load(_fair_cfg(tmp_path), BadSampleReport())
    report = BadSampleReport("skip")
    index = fairvlmed.load(_fair_cfg(tmp_path), report)
    assert len(index.splits["train"]) == 2 and report.entries[0]["where"] == paths[1]
    data["note"] = np.str_("a note")
    np.savez(paths[1], **data)
    with open(paths[2], "wb") as f:
        f.write(b"not a zip")
    with pytest.raises(DataError, match=r"data_08002\.npz"):
        fairvlmed.load(_fair_cfg(tmp_path), BadSampleReport())
    os.makedirs(tmp_path / "Testing")
    with pytest.raises(DataError, match="Test/ or Testing/, found both"):
        fairvlmed.load(_fair_cfg(tmp_path), BadSampleReport())
    shutil.rmtree(tmp_path / "Validation")
    with pytest.raises(DataError, match="Validation/, found neither"):
        fairvlmed.load(_fair_cfg(tmp_path), BadSampleReport())


def _mimic_samples():
    samples = []
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        cells = {c: "" for c in mimic_cxr.CHEXPERT_COLUMNS}
        cells["Cardiomegaly"] = "1.0" if i % 2 else "0.0"
        cells["Edema"] = "-1.0" if i % 3 == 0 else ""
        cells["Support Devices"] = "1.0"
        cells["No Finding"] = "1.0"
        report = f"heart size {'enlarged' if i % 2 else 'normal'}."
        samples.append(
            {
                "split": split, "id": f"dicom-{i}", "subject_id": 10000032 + i // 2,
                "study_id": 50414267 + i, "report": report, "image": _fundus(i), "cells": cells,
            }
        )  # fmt: skip
    return samples


def _mimic_cfg(root, **kw):
    return _cfg("mimic_cxr", root, **kw)


@pytest.mark.parametrize("gz", [True, False])
def test_mimic_reads_r2gen_annotation_and_chexpert_labels(tmp_path, gz):
    samples = _mimic_samples()
    _, labels_path = write_cfn_formats.write_mimic(str(tmp_path), samples, gz=gz)
    cfg = _mimic_cfg(tmp_path, mimic_labels=os.path.basename(labels_path))
    index = mimic_cxr.load(cfg, BadSampleReport())
    assert index.multilabel and len(index.class_names) == 13
    assert "No Finding" not in index.class_names
    assert [len(index.splits[s]) for s in ("train", "val", "test")] == [4, 2, 2]
    card, edema = index.class_names.index("Cardiomegaly"), index.class_names.index("Edema")
    devices = index.class_names.index("Support Devices")
    for r, s in zip(index.splits["train"], samples[:4], strict=True):
        assert r.image_id == s["id"] and r.meta["report"] == s["report"]
        assert r.patient_id == str(s["subject_id"])
        assert r.labels[card] == (s["cells"]["Cardiomegaly"] == "1.0")
        assert r.labels[edema] == 0.0 and r.labels[devices] == 1.0 and r.labels.sum() <= 2
        assert load_image(r.path).shape == (24, 20, 3)
    cfg.mimic_uncertain = "ones"
    index = mimic_cxr.load(cfg, BadSampleReport())
    assert index.splits["train"][0].labels[edema] == 1.0  # -1.0 (uncertain) -> positive


def test_mimic_bad_inputs_name_the_file_and_entry(tmp_path):
    samples = _mimic_samples()
    ann_path, labels_path = write_cfn_formats.write_mimic(str(tmp_path), samples, gz=False)
    cfg = _mimic_cfg(tmp_path, mimic_labels=os.path.basename(labels_path))
    ann = json.load(open(ann_path))
    text = open(labels_path).read()
    with open(labels_path, "w") as f:
        f.write(text.replace("-1.0", "2.0", 1))
    with pytest.raises(DataError, match=r"chexpert\.csv:2: column 'Edema' is '2\.0'"):
        mimic_cxr.load(cfg, BadSampleReport())
    with open(labels_path, "w") as f:
        f.write(text)
    del ann["val"][1]["report"]
    json.dump(ann, open(ann_path, "w"))
    with pytest.raises(
        DataError, match=r"annotation\.json\['val'\]\[1\]: entry lacks \['report'\]"
    ):
        mimic_cxr.load(cfg, BadSampleReport())
    ann["val"][1]["report"] = "ok"
    ann["test"][0]["study_id"] = 1
    json.dump(ann, open(ann_path, "w"))
    with pytest.raises(DataError, match=r"\['test'\]\[0\]: study 1 of subject .* has no row"):
        mimic_cxr.load(cfg, BadSampleReport())
    with open(ann_path, "w") as f:
        f.write('{"train": [],\n "val": [,]}')
    with pytest.raises(DataError, match=r"annotation\.json:2: not valid JSON"):
        mimic_cxr.load(cfg, BadSampleReport())
    json.dump({"train": [], "val": []}, open(ann_path, "w"))
    with pytest.raises(DataError, match=r"no list for split\(s\) \['test'\]"):
        mimic_cxr.load(cfg, BadSampleReport())


def test_cfn_configs_default_to_the_real_formats():
    fair = cfn_config.get_config("fairvlmed")
    mimic = cfn_config.get_config("mimic")
    assert fair.data.name == "fairvlmed" and mimic.data.name == "mimic_cxr"
    assert fair.cfn.naming.source == mimic.cfn.naming.source == "reports"
    pickles = cfn_config.get_config("mimic", "data_format=class2images")
    assert pickles.data.name == "class2images" and pickles.data.multilabel_keys
    vit = cfn_config.get_config("ham10000", "backbone=vit_b_16")
    assert vit.model.backbone == "vit_b_16" and vit.model.tap == "cls"

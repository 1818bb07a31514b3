"""Published-file quirks and bad-input reports of the dataset loaders, on hand-made files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxproto.common.errors import DataError
from jaxproto.data import chestxray14, covidx, odir
from jaxproto.data.records import BadSampleReport
from jaxproto.data.registry import default_data_config, load_index


def _png(path, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 7, np.uint8)).save(path)


def _nih(root, entry_header, entry_rows, bbox_lines, train, test, layout="flat"):
    (root / "Data_Entry_2017.csv").write_text(entry_header + "\n" + "\n".join(entry_rows) + "\n")
    (root / "BBox_List_2017.csv").write_text("\n".join(bbox_lines) + "\n")
    (root / "train_val_list.txt").write_text("".join(n + "\n" for n in train))
    (root / "test_list.txt").write_text("".join(n + "\n" for n in test))
    for name in train + test:
        _png(root / ("images_001/images" if layout == "kaggle" else "data") / name)


def _cfg(name, root, **kw):
    cfg = default_data_config(name)
    cfg.root = str(root)
    cfg.update(kw)
    return cfg


BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
V2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
OLD = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def test_nih_v2020_sex_infiltrate_and_kaggle_layout(tmp_path):
    rows = [
        "00000001_000.png,Infiltration|Mass,0,1,57,M,PA,2682,2749,0.143,0.143",
        "00000002_000.png,No Finding,0,2,30,F,AP,2500,2048,0.168,0.168",
    ]
    boxes = [BBOX_HEADER, "00000001_000.png,Infiltrate,1.5,2.5,3,4,,,"]
    _nih(tmp_path, V2020, rows, boxes, ["00000001_000.png"], ["00000002_000.png"], "kaggle")
    index = load_index(_cfg("chestxray14", tmp_path), BadSampleReport())
    r = index.splits["train"][0]
    assert r.meta["Patient Gender"] == "M" and r.patient_id == "1"
    assert np.flatnonzero(r.labels).tolist() == [3, 4]
    assert r.boxes[0].label == 3 and (r.boxes[0].x, r.boxes[0].h) == (1.5, 4.0)
    assert r.path.endswith("images_001/images/00000001_000.png") and r.size == (8, 8)
    assert np.flatnonzero(index.splits["test"][0].labels).tolist() == [14]


def test_nih_2017_trailing_comma_header(tmp_path):
    rows = ["00000001_000.png,Hernia,0,1,57,M,PA,2682,2749,0.143,0.143,"]
    _nih(tmp_path, OLD, rows, [BBOX_HEADER], ["00000001_000.png"], ["00000001_000.png"][:0])
    (tmp_path / "test_list.txt").write_text("")
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_index(_cfg("chestxray14", tmp_path), BadSampleReport())
    table = chestxray14.read_data_entry(
        str(tmp_path / "Data_Entry_2017.csv"), chestxray14.class_names(), BadSampleReport()
    )
    assert table["00000001_000.png"][0][13] == 1


def test_nih_wrong_header_names_file_and_columns(tmp_path):
    _nih(tmp_path, "Image,Labels,Patient ID", ["a.png,Mass,1"], [BBOX_HEADER], ["a.png"], [])
    with pytest.raises(
        DataError,
        match=r"Data_Entry_2017.csv: wrong header: missing column\(s\) "
        r"\['Image Index', 'Finding Labels'\]; found columns \['Image'",
    ):
        load_index(_cfg("chestxray14", tmp_path), BadSampleReport())


def test_nih_bad_rows_reported(tmp_path):
    rows = [
        "00000001_000.png,Mass,0,1,57,M,PA,1,1,1,1",
        "00000002_000.png,Tumour,0,2,57,M,PA,1,1,1,1",
        "00000001_000.png,Mass,0,1,57,M,PA,1,1,1,1",
        "00000003_000.png,Mass,0,3,57,M,PA,1,1,1,1",
    ]
    boxes = [BBOX_HEADER, "00000001_000.png,Lesion,1,2,3,4"]
    _nih(
        tmp_path,
        V2020,
        rows,
        boxes,
        ["00000001_000.png", "00000002_000.png"],
        ["00000003_000.png", "00000009_000.png"],
    )
    (tmp_path / "data" / "00000003_000.png").unlink()
    with pytest.raises(DataError, match=r"Data_Entry_2017.csv:3: Finding Labels 'Tumour'"):
        load_index(_cfg("chestxray14", tmp_path), BadSampleReport())
    report = BadSampleReport("skip")
    _nih(
        tmp_path,
        V2020,
        rows + ["00000004_000.png,Mass,0,4,57,M,PA,1,1,1,1"],
        boxes,
        ["00000001_000.png", "00000002_000.png"],
        ["00000004_000.png", "00000009_000.png"],
    )
    (tmp_path / "data" / "00000003_000.png").unlink(missing_ok=True)
    index = load_index(_cfg("chestxray14", tmp_path), report)
    problems = [e["problem"] for e in report.entries]
    assert any("unknown label(s) ['Tumour']" in p for p in problems)
    assert any("duplicate image id '00000001_000.png'" in p for p in problems)
    assert any("unknown box label 'Lesion'" in p for p in problems)
    assert any("'00000009_000.png' is not in" in p for p in problems)
    assert any(e["where"].endswith("train_val_list.txt:2") for e in report.entries)
    assert [r.image_id for r in index.splits["train"]] == ["00000001_000.png"]


def test_nih_missing_image_reported(tmp_path):
    rows = ["00000001_000.png,Mass,0,1,57,M,PA,1,1,1,1", "00000002_000.png,Mass,0,2,5,M,PA,1,1,1,1"]
    _nih(tmp_path, V2020, rows, [BBOX_HEADER], ["00000001_000.png"], ["00000002_000.png"])
    (tmp_path / "data" / "00000002_000.png").unlink()
    with pytest.raises(
        DataError, match=r"test_list.txt:1: image file '00000002_000.png' not found"
    ):
        load_index(_cfg("chestxray14", tmp_path), BadSampleReport())


def test_odir_full_width_comma_keywords():
    fw = "\uff0c"
    assert odir.eye_classes(f"moderate non proliferative retinopathy{fw}lens dust") == [0]
    assert odir.eye_classes(f"normal fundus{fw}lens dust") == [7]
    assert odir.eye_classes(f"glaucoma{fw}normal fundus") == [1]
    assert odir.eye_classes(f"lens dust{fw}low image quality") == []
    assert odir.eye_classes(f"pathological myopia{fw}drusen{fw}cataract") == [2, 5, 6]
    assert odir.eye_classes("wet age-related macular degeneration") == [3]
    assert odir.eye_classes("hypertensive retinopathy") == [4]
    # An ASCII comma is not a separator by default (CIPL): the cell is one keyword, matched once.
    assert odir.eye_classes("glaucoma,cataract") == [1]
    assert odir.eye_classes("glaucoma,cataract", ascii_comma=True) == [1, 2]


def test_odir_full_df_csv(tmp_path):
    import csv

    cols = [
        "ID",
        "Patient Age",
        "Patient Sex",
        "Left-Fundus",
        "Right-Fundus",
        "Left-Diagnostic Keywords",
        "Right-Diagnostic Keywords",
        "N",
        "D",
        "G",
        "C",
        "A",
        "H",
        "M",
        "O",
        "filepath",
        "labels",
        "target",
        "filename",
    ]
    img_dir = tmp_path / "ODIR-5K" / "ODIR-5K" / "Training Images"
    rows = []
    for k in range(10):
        for eye in ("left", "right"):
            kw = "cataract" if k % 2 else "normal fundus"
            rows.append(
                [
                    k,
                    60,
                    "Male",
                    f"{k}_left.jpg",
                    f"{k}_right.jpg",
                    kw,
                    kw,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    "/kaggle/x",
                    "['N']",
                    "[1, 0, 0, 0, 0, 0, 0, 0]",
                    f"{k}_{eye}.jpg",
                ]
            )
            _png(img_dir / f"{k}_{eye}.jpg")
    with open(tmp_path / "full_df.csv", "w", newline="") as f:
        csv.writer(f).writerows([cols] + rows)
    index = load_index(
        _cfg("odir", tmp_path, odir_format="full_df", test_fraction=0.3), BadSampleReport()
    )
    pats = {s: {r.patient_id for r in v} for s, v in index.splits.items()}
    assert not pats["train"] & pats["test"]
    assert sum(map(len, index.splits.values())) == 20
    for recs in index.splits.values():
        eyes = [r.meta["eye"] for r in recs]
        assert eyes == sorted(eyes, key=lambda e: e != "left")
        for r in recs:
            assert np.flatnonzero(r.labels).tolist() == ([2] if int(r.patient_id) % 2 else [7])


def test_covidx_line_layouts_and_errors(tmp_path):
    (tmp_path / "train").mkdir()
    for name in ("a.b.c.png", "d.png", "e.jpg"):
        _png(tmp_path / "train" / name)
    path = tmp_path / "list.txt"
    path.write_text("1 a.b.c.png COVID-19 cohen\n2 d.png normal\n\n3 e.jpg pneumonia\n")
    recs = covidx.read_label_file(
        str(path), str(tmp_path / "train"), ["normal", "pneumonia", "COVID-19"], BadSampleReport()
    )
    assert [(r.image_id, int(r.labels.argmax()), r.meta["source"]) for r in recs] == [
        ("a.b.c.png", 2, "cohen"),
        ("d.png", 0, ""),
        ("e.jpg", 1, ""),
    ]
    path.write_text("1 a.png COVID-19\n2 d.png Normal\n")
    with pytest.raises(DataError, match=r"list.txt:2: unknown label 'Normal'"):
        covidx.read_label_file(
            str(path), "", ["normal", "pneumonia", "COVID-19"], BadSampleReport()
        )
    path.write_text("1 a.png\n")
    with pytest.raises(DataError, match=r"list.txt:1: 2 fields"):
        covidx.read_label_file(str(path), "", ["normal"], BadSampleReport())


def test_isic_both_labels_and_superpixels(tmp_path):
    d = tmp_path / "ISIC-2017_Training_Data"
    for k in range(3):
        _png(d / f"ISIC_000000{k}.jpg")
        _png(d / f"ISIC_000000{k}_superpixels.png")
    gt = tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv"
    gt.write_bytes(
        b"image_id,melanoma,seborrheic_keratosis\r\nISIC_0000000,0.0,0.0\r\n"
        b"ISIC_0000001,1.0,1.0\r\nISIC_0000002,0.0,1.0\r\n"
    )
    (tmp_path / "ISIC-2017_Test_v2_Part3_GroundTruth.csv").write_bytes(
        b"image_id,melanoma,seborrheic_keratosis\r\nISIC_0000000,1.0,0.0\r\n"
    )
    tdir = tmp_path / "ISIC-2017_Test_v2_Data"
    _png(tdir / "ISIC_0000000.jpg")
    with pytest.raises(DataError, match="Part3_GroundTruth.csv:3: both melanoma and"):
        load_index(_cfg("isic2017", tmp_path), BadSampleReport())
    report = BadSampleReport("skip")
    index = load_index(_cfg("isic2017", tmp_path), report)
    assert [r.image_id for r in index.splits["train"]] == ["ISIC_0000000", "ISIC_0000002"]
    assert all(not r.path.endswith("_superpixels.png") for r in index.splits["train"])
    assert len(report.entries) == 1


def test_tbx11k_bad_category_and_list(tmp_path):
    from jaxproto.data import tbx11k

    coco = {
        "images": [{"id": 1, "file_name": "tb/tb0001.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 2, 3, 4]}],
        "categories": [{"id": 1, "name": "ActiveTuberculosis"}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"annotations\[0\]: unknown category_id 9"):
        tbx11k.read_coco_boxes(str(tmp_path / "c.json"), BadSampleReport())
    (tmp_path / "l.txt").write_text("imgs/health/h0001.png\nxray/x.png\n")
    with pytest.raises(DataError, match=r"l.txt:2: path 'xray/x.png'"):
        tbx11k.read_list(str(tmp_path / "l.txt"), str(tmp_path), BadSampleReport())


def test_vindr_box_consistency(tmp_path):
    from jaxproto.data import vindr

    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "a,Cardiomegaly,3,R1,1,2,5,6\nb,No finding,14,R2,1,2,3,4\n"
    )
    with pytest.raises(DataError, match=r"train.csv:3: 'No finding' with a box"):
        vindr.read_kaggle(str(csv_path), "", "any", BadSampleReport())
    csv_path.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "a,Cardiomegaly,3,R1,1,2,5,6\na,No finding,14,R2,,,,\n"
        "a,No finding,14,R3,,,,\n"
    )
    (rec,) = vindr.read_kaggle(str(csv_path), "", "majority", BadSampleReport())
    assert np.flatnonzero(rec.labels).tolist() == [14] and rec.boxes == ()
    (rec,) = vindr.read_kaggle(str(csv_path), "", "any", BadSampleReport())
    assert np.flatnonzero(rec.labels).tolist() == [3] and rec.boxes[0].w == 4.0


def test_unknown_dataset_and_missing_root():
    with pytest.raises(ValueError, match="unknown dataset data.name='nih'"):
        default_data_config("nih")
    cfg = default_data_config("covidx")
    with pytest.raises(ValueError, match="data.root is empty"):
        load_index(cfg, BadSampleReport())

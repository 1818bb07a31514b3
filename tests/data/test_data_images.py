"""Image decoding: PNG/JPEG/16-bit/DICOM/truncated files, and real files shipped in packages."""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from jaxproto.common.errors import DataError
from jaxproto.data.images import image_size, load_image
from jaxproto.data.records import BadSampleReport
from jaxproto.data.write_real_format import write_dicom


def test_png_grey_rgb_channels(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), rgb)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_allclose(load_image(str(tmp_path / "a.png"), 1)[:, :, 0], grey, atol=1)
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = load_image(str(tmp_path / "g.png"))
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 2], grey)
    assert image_size(str(tmp_path / "a.png")) == (7, 5)


def test_16bit_png_scaled_by_bit_depth(tmp_path):
    x = np.array([[0, 1000, 4095], [2048, 17, 300]], np.uint16)
    Image.fromarray(x).save(tmp_path / "x.png")
    want = np.rint(x.astype(np.float64) * 255 / 4095).astype(np.uint8)  # 12-bit data
    np.testing.assert_array_equal(load_image(str(tmp_path / "x.png"), 1)[:, :, 0], want)


def test_truncated_and_missing_files(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t.jpg: cannot decode image"):
        load_image(str(tmp_path / "t.jpg"))
    (tmp_path / "n.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"n.png: cannot decode image"):
        load_image(str(tmp_path / "n.png"))
    with pytest.raises(DataError, match=r"gone.png: image file not found"):
        load_image(str(tmp_path / "gone.png"))
    (tmp_path / "t.dcm").write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=r"t.dcm: cannot read DICOM"):
        load_image(str(tmp_path / "t.dcm"))


def _reference_dicom(x, slope, intercept, window, invert):
    y = x.astype(np.float64) * slope + intercept
    if window is not None:  # DICOM PS3.3 C.11.2.1.2 linear window, output range [0, 2^bits - 1]
        c, w = window
        ymax = 2**16 - 1
        y = np.where(
            y <= c - 0.5 - (w - 1) / 2,
            0,
            np.where(y > c - 0.5 + (w - 1) / 2, ymax, ((y - (c - 0.5)) / (w - 1) + 0.5) * ymax),
        )
    y = (y - y.min()) / (y.max() - y.min())
    return np.rint((1 - y if invert else y) * 255).astype(np.uint8)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("window", [None, (1500.0, 2000.0)])
def test_dicom_window_rescale_and_inversion(tmp_path, photometric, window):
    x = np.random.default_rng(1).integers(0, 4096, (6, 9), dtype=np.uint16)
    path = str(tmp_path / "x.dicom")
    write_dicom(path, x, photometric, window=window, slope=1.0, intercept=0.0)
    got = load_image(path, 1)[:, :, 0]
    want = _reference_dicom(x, 1.0, 0.0, window, photometric == "MONOCHROME1")
    np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)
    assert image_size(path) == (9, 6)


def test_dicom_rescale_slope_intercept(tmp_path):
    x = np.array([[0, 10], [20, 30]], np.uint16)
    path = str(tmp_path / "x.dcm")
    write_dicom(path, x, window=(10.0, 20.0), slope=2.0, intercept=-5.0)
    # slope/intercept move the values into the window: 2x - 5 = -5, 15, 35, 55.
    want = _reference_dicom(x, 2.0, -5.0, (10.0, 20.0), False)
    np.testing.assert_allclose(load_image(path, 1)[:, :, 0], want, atol=1)


def test_real_monochrome1_chest_radiograph():
    """pydicom-data's RG1_UNCI.dcm: a real PA chest CR, 15-bit MONOCHROME1 (data_formats §10.2)."""
    pytest.importorskip("pydicom")
    if (
        importlib.util.find_spec("pydicom_data") is None
        and importlib.util.find_spec("data_store") is None
    ):
        pytest.skip("pydicom-data not installed")
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCI.dcm", download=False)
    if path is None:
        pytest.skip("RG1_UNCI.dcm not available locally")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = load_image(path, 1)[:, :, 0]
    assert img.shape == (ds.Rows, ds.Columns) and image_size(path) == (ds.Columns, ds.Rows)
    # After inversion lungs are dark and the mediastinum/border bright: the centre column band
    # (spine) is brighter than the lung fields left and right of it.
    h, w = img.shape
    mid = img[h // 3 : 2 * h // 3, w // 2 - w // 20 : w // 2 + w // 20].mean()
    lungs = np.concatenate(
        [
            img[h // 3 : 2 * h // 3, w // 4 - w // 20 : w // 4 + w // 20],
            img[h // 3 : 2 * h // 3, 3 * w // 4 - w // 20 : 3 * w // 4 + w // 20],
        ]
    )
    assert mid > lungs.mean() + 20


def test_real_fundus_jpeg(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    retina = skdata.retina()[500:800, 500:800]
    Image.fromarray(retina).save(tmp_path / "r.jpg", quality=90)
    got = load_image(str(tmp_path / "r.jpg"))
    np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "r.jpg").convert("RGB")))
    assert np.abs(got.astype(int) - retina).mean() < 4


def _txv_data(name):
    spec = importlib.util.find_spec("torchxrayvision")  # locates the package; does not import it
    if spec is None or spec.origin is None:
        pytest.skip("torchxrayvision (installed --no-deps) not available")
    path = os.path.join(os.path.dirname(spec.origin), "data", name)
    if not os.path.isfile(path):
        pytest.skip(f"{name} not in the installed torchxrayvision")
    return path


def test_real_nih_metadata_counts():
    from jaxproto.data import chestxray14 as C

    table = C.read_data_entry(
        _txv_data("Data_Entry_2017_v2020.csv.gz"), C.class_names(), BadSampleReport()
    )
    assert len(table) == 112_120
    assert len({v[1] for v in table.values()}) == 30_805
    counts = C.label_counts(table, C.class_names())
    assert counts["No Finding"] == 60_361 and counts["Infiltration"] == 19_894
    assert counts["Hernia"] == 227 and counts["Effusion"] == 13_317
    boxes = C.read_bbox_list(_txv_data("BBox_List_2017.csv.gz"), BadSampleReport())
    assert len(boxes) == 880 and sum(map(len, boxes.values())) == 984
    per_class = np.bincount([b.label for bs in boxes.values() for b in bs], minlength=14)
    assert per_class[C.DISEASES.index("Infiltration")] == 123
    assert per_class[C.DISEASES.index("Atelectasis")] == 180
    assert set(boxes) <= set(table)


def test_real_vinbigdata_rows(tmp_path):
    from jaxproto.data import vindr

    src = _txv_data("vinbigdata-train.csv.gz")
    with gzip.open(src, "rt") as f:
        head = [next(f) for _ in range(2001)]
    (tmp_path / "train.csv").write_text("".join(head))
    recs = vindr.read_kaggle(str(tmp_path / "train.csv"), "", "any", BadSampleReport())
    assert len(recs) > 100
    for r in recs:
        assert (r.labels[14] == 1) == (not r.boxes)
        assert all(b.w > 0 and b.h > 0 for b in r.boxes)

"""Export -> predict equals evaluating the workdir; every bad-input case gives a clear error."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxproto import inference, predict
from jaxproto.common import cli
from jaxproto.common import config as config_lib
from jaxproto.core import prediction, workdir
from jaxproto.core.trainer import collect_predictions, stream_predictions
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.viz.overlays import save_png


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    wd = tmp_path_factory.mktemp("run")
    spec = os.path.join(root, "configs", "baseline_odir.py") + ":synthetic"
    config = config_lib.build_config(
        spec,
        [
            ("model.image_size", "32"),
            ("data.num_train", "32"),
            ("data.num_test", "12"),
            ("train.batch_size", "8"),
            ("train.eval_batch_size", "8"),
            ("train.epochs", "1.0"),
            ("train.eval_every_epochs", "0.0"),
        ],
    )
    trainer = build_trainer(config, str(wd), devices=jax.devices()[:1])
    trainer.train()
    out = tmp_path_factory.mktemp("export") / "exp"
    state_cfg, _, state = inference.load_for_inference(str(wd))
    inference.write_export(str(out), state_cfg, workdir.read_dataset_meta(str(wd)), state)
    images = tmp_path_factory.mktemp("images")
    records = trainer.index.split("test")[:5]
    for r in records:
        save_png(str(images / f"{r.image_id}.png"), load_image(r.path))
    return {
        "root": root,
        "workdir": wd,
        "export": out,
        "images": images,
        "records": records,
        "trainer": trainer,
    }


def test_export_then_predict_matches_workdir_evaluation(trained):
    _, method_w, state_w = inference.load_for_inference(str(trained["workdir"]))
    records = trained["records"]
    ref = collect_predictions(
        stream_predictions(method_w, trained["trainer"].mesh, state_w, records, 8), len(records)
    )
    _, method_e, state_e = inference.load_for_inference(export=str(trained["export"]))
    paths = [str(trained["images"] / f"{r.image_id}.png") for r in records]
    kept, preds, skipped = prediction.predict_files(
        method_e, state_e, paths, batch_size=2, skip_bad=False
    )
    assert kept == paths and not skipped
    np.testing.assert_allclose(preds["probs"], ref["probs"], atol=1e-5)


def test_relative_workdir_and_export_paths_load(trained, monkeypatch):
    """README's commands pass relative paths (runs/demo); orbax itself needs absolute ones."""
    _, _, absolute = inference.load_for_inference(str(trained["workdir"]))
    monkeypatch.chdir(trained["workdir"].parent)
    _, _, relative = inference.load_for_inference(trained["workdir"].name)
    for a, b in zip(jax.tree.leaves(absolute), jax.tree.leaves(relative), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    monkeypatch.chdir(trained["export"].parent)
    inference.load_for_inference(export=trained["export"].name)


def test_export_has_no_optimizer_state_and_records_preprocessing(trained):
    manifest = json.loads((trained["export"] / "manifest.json").read_text())
    assert manifest["format_version"] == inference.FORMAT_VERSION
    assert manifest["preprocessing"]["image_size"] == 32
    _, _, state = inference.read_export(str(trained["export"]))
    assert set(state) == {"params", "batch_stats", "extra"}


def test_tampered_export_is_refused(trained, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained["export"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["image_size"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(inference.ExportError, match="checksum mismatch"):
        inference.read_export(str(bad))


def test_newer_export_format_is_refused(trained, tmp_path):
    bad = tmp_path / "newer"
    shutil.copytree(trained["export"], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format_version"] = inference.FORMAT_VERSION + 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(inference.ExportError, match="newer than this jaxproto supports"):
        inference.read_export(str(bad))


def test_incomplete_workdir_is_a_clear_error(trained, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(trained["workdir"] / "config.json", partial / "config.json")
    with pytest.raises(FileNotFoundError, match="dataset.json is missing"):
        inference.load_for_inference(str(partial))
    shutil.copy(trained["workdir"] / "dataset.json", partial / "dataset.json")
    with pytest.raises(inference.IncompleteWorkdir, match="no finished checkpoint"):
        inference.load_for_inference(str(partial))


def _predict_cli(trained, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "jaxproto.predict",
        "--export",
        str(trained["export"]),
        "--images",
        str(trained["images"]),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, cwd=trained["root"], capture_output=True, text=True, timeout=300)


def test_predict_folder_with_a_bad_image(trained, tmp_path):
    (trained["images"] / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    try:
        res = _predict_cli(trained, tmp_path / "p.csv")
        assert res.returncode == 2, res.stderr[-2000:]
        assert "zz_broken.png" in res.stderr and "Traceback" not in res.stderr
        assert not (tmp_path / "p.csv").exists()
        res = _predict_cli(trained, tmp_path / "q.csv", "--skip_bad")
        assert res.returncode == 0, res.stderr[-2000:]
        rows = list(csv.reader(open(tmp_path / "q.csv")))
        assert len(rows) == 1 + len(trained["records"])
        assert rows[0][0] == "image" and len(rows[0]) > 1
        skipped = json.loads((tmp_path / "q_skipped.json").read_text())
        assert [os.path.basename(s["image"]) for s in skipped] == ["zz_broken.png"]
    finally:
        os.remove(trained["images"] / "zz_broken.png")


def test_predict_takes_several_files_and_folders(trained, tmp_path):
    """README's ``--images A.png B.dcm DIR ...``: every item is used (absl used only the first)."""
    files = sorted(str(p) for p in trained["images"].iterdir())
    argv = ["--export", str(trained["export"]), "--images", files[0], files[1]]
    argv += [str(trained["images"]), "--images", files[2], "--out", str(tmp_path / "p.csv")]
    assert cli.run(predict.main, argv) == 0
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert [r[0] for r in rows[1:]] == [files[0], files[1], *files, files[2]]
    assert sorted(os.listdir(tmp_path)) == ["p.csv", "p_ood.csv"]  # no temporary files left


def test_predict_refuses_an_unwritable_out_before_loading(trained, tmp_path, capsys):
    argv = ["--export", str(tmp_path / "no_export"), "--images", str(trained["images"])]
    assert cli.run(predict.main, [*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder; give a file name" in err

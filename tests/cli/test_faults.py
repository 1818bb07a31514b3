"""Nothing lost, nothing silent (issue #19): damaged checkpoints fall back to the newest intact
step, a workdir of another config is refused with the differing keys, a running workdir is
locked, config mistakes stop before any work, --dry_run writes nothing."""

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from jaxproto import export, inference, train
from jaxproto.common import cli
from jaxproto.common import config as config_lib
from jaxproto.common.errors import ConfigError, UserError
from jaxproto.core import checkpoint, workdir
from jaxproto.methods import build_trainer, resolve_protocol
from tests.tiny_runs import TINY_RUN

TINY = [
    *TINY_RUN,
    ("train.epochs", "3.0"),
    ("train.eval_every_epochs", "0.0"),
    ("train.checkpoint_every_steps", "2"),
    ("train.keep_checkpoints", "3"),
    ("train.best_metric", ""),
]


def _spec(repo_root):
    return os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"


def _config(repo_root, extra=()):
    """The resolved config (eval.protocol applied), as ``train`` records it."""
    config = config_lib.build_config(_spec(repo_root), [*TINY, *extra])
    resolve_protocol(config)
    return config


@pytest.fixture(scope="module")
def run(repo_root, tmp_path_factory):
    """A finished tiny run with checkpoints at steps 2, 4 and 6."""
    wd = tmp_path_factory.mktemp("run") / "wd"
    build_trainer(_config(repo_root), str(wd), devices=jax.devices()[:1]).train()
    assert [int(s) for s in sorted(os.listdir(wd / "ckpt")) if s.isdigit()] == [2, 4, 6]
    return wd


def _copy(run, tmp_path):
    dst = tmp_path / "wd"
    shutil.copytree(run, dst)
    return dst


def _export(wd, out, capsys, which="latest"):
    argv = ["--workdir", str(wd), "--out", str(out), "--checkpoint", which]
    code = cli.run(export.main, argv)
    return code, capsys.readouterr().err


def test_half_deleted_latest_checkpoint_falls_back(run, tmp_path, capsys, caplog):
    wd = _copy(run, tmp_path)
    os.remove(wd / "ckpt" / "6" / "state" / "manifest.ocdbt")
    code, _ = _export(wd, tmp_path / "exp", capsys)
    assert code == 0
    assert "ckpt/6 is damaged (state/manifest.ocdbt is missing)" in caplog.text
    assert "restored latest checkpoint at step 4" in caplog.text


def test_corrupt_checkpoint_data_falls_back(run, tmp_path, capsys, caplog):
    wd = _copy(run, tmp_path)
    data = wd / "ckpt" / "6" / "state" / "d"
    for name in os.listdir(data):
        (data / name).write_bytes(b"garbage")
    code, err = _export(wd, tmp_path / "exp", capsys)
    assert code == 0, err
    assert "ckpt/6 is damaged" in caplog.text and "Traceback" not in err
    assert "restored latest checkpoint at step 4" in caplog.text


def test_no_intact_checkpoint_is_one_line(run, tmp_path, capsys):
    wd = _copy(run, tmp_path)
    for step in ("2", "4", "6"):
        os.remove(wd / "ckpt" / step / "_CHECKPOINT_METADATA")
    code, err = _export(wd, tmp_path / "exp", capsys)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    err = errors[0]
    assert "no intact checkpoint" in err and "ckpt/6 (_CHECKPOINT_METADATA is missing)" in err
    assert not (tmp_path / "exp").exists()


def test_resume_moves_a_damaged_step_aside(run, tmp_path):
    wd = _copy(run, tmp_path)
    os.remove(wd / "ckpt" / "6" / "state" / "_METADATA")
    ckpt = checkpoint.Checkpointer(str(wd), keep=3, async_save=False)
    try:
        assert ckpt.latest_step() == 4
    finally:
        ckpt.close()
    assert (wd / "ckpt" / "6.damaged" / "state").is_dir()  # kept, not deleted


def test_export_never_overwrites(run, tmp_path, capsys):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = _export(run, out, capsys)
    assert code == 2 and "already holds files" in err
    assert os.listdir(out) == ["notes.txt"]


def test_workdir_of_another_config_is_refused(run, repo_root, tmp_path, capsys):
    wd = _copy(run, tmp_path)
    before = (wd / "config.json").read_text()
    argv = ["--config", _spec(repo_root), *(f"--config.{k}={v}" for k, v in TINY)]
    argv += ["--config.optim.lr=0.5", "--workdir", str(wd)]
    assert cli.run(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run of another config (optim.lr: " in err
    assert "--config.train.allow_config_change=true" in err
    argv[-3] = "--config.model.backbone=resnet18"
    assert cli.run(train.main, argv) == 2
    err = capsys.readouterr().err
    assert "model.backbone change the train state" in err and "new --workdir" in err
    assert (wd / "config.json").read_text() == before and not (wd / "lock.json").exists()


def test_allowed_change_keeps_a_config_history(run, repo_root, tmp_path):
    wd = _copy(run, tmp_path)
    original = (wd / "config.json").read_text()
    changed = _config(repo_root, [("optim.lr", "0.5")])
    with pytest.raises(ConfigError, match="allow_config_change"):
        workdir.record_config(str(wd), changed)
    with changed.unlocked():
        changed.train.allow_config_change = True
    assert workdir.check_config_change(str(wd), changed) == ["optim.lr"]
    assert workdir.record_config(str(wd), changed).endswith("config.1.json")
    assert workdir.record_config(str(wd), changed).endswith("config.1.json")  # no new entry
    assert (wd / "config.json").read_text() == original
    assert json.loads((wd / "config.1.json").read_text())["optim"]["lr"] == 0.5


def test_extending_a_run_with_max_steps_needs_no_flag(run, repo_root, tmp_path):
    wd = _copy(run, tmp_path)
    longer = _config(repo_root, [("train.max_steps", "12345")])
    assert workdir.check_config_change(str(wd), longer) == []


def test_lock_names_the_holder_and_takes_over_a_stale_one(tmp_path, caplog):
    wd = str(tmp_path / "wd")
    with workdir.lock(wd):
        holder = json.loads(open(os.path.join(wd, "lock.json")).read())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
        with pytest.raises(UserError, match=rf"in use by another run \(host .*, pid {os.getpid()}"):
            with workdir.lock(wd):
                pass
    assert not os.path.exists(os.path.join(wd, "lock.json"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder["pid"] = dead.pid
    with open(os.path.join(wd, "lock.json"), "w") as f:
        json.dump(holder, f)
    with workdir.lock(wd):
        assert json.loads(open(os.path.join(wd, "lock.json")).read())["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text


def test_locked_workdir_stops_train_at_once(run, repo_root, tmp_path, capsys):
    wd = _copy(run, tmp_path)
    argv = ["--config", _spec(repo_root), *(f"--config.{k}={v}" for k, v in TINY)]
    with workdir.lock(str(wd)):
        assert cli.run(train.main, [*argv, "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {os.getpid()}" in err


def test_config_mistakes_stop_before_any_work(repo_root, tmp_path, capsys):
    wd = tmp_path / "wd"
    real = os.path.join(repo_root, "configs", "cipl_odir.py")
    assert cli.run(train.main, ["--config", real, "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err
    assert "--config.data.root=/path/to/ODIR-5K" in err and err.count("\n") == 1
    argv = ["--config", _spec(repo_root), "--config.train.batch_size=0"]
    argv += ["--config.model.backbone=resnet5", "--config.train.best_mode=up"]
    assert cli.run(train.main, [*argv, "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err
    assert "model.backbone='resnet5' is unknown" in err and "train.batch_size=0" in err
    assert "train.best_mode='up' must be one of max, min" in err
    argv = ["--config", _spec(repo_root), *(f"--config.{k}={v}" for k, v in TINY)]
    argv += ["--config.data.num_val=0", "--workdir", str(wd)]  # the validation protocol's split
    assert cli.run(train.main, argv) == 2
    err = capsys.readouterr().err
    assert "train.eval_split='val'" in err and "--config.eval.protocol=paper" in err
    assert not wd.exists()  # no empty workdir left behind


def test_dry_run_prints_the_plan_and_writes_nothing(repo_root, tmp_path, capsys):
    wd = tmp_path / "wd"
    argv = ["--config", _spec(repo_root), *(f"--config.{k}={v}" for k, v in TINY)]
    assert cli.run(train.main, [*argv, "--workdir", str(wd), "--dry_run"]) == 0
    out = capsys.readouterr().out
    # 16 train + 8 test + 8 generated validation images
    assert "32 images checked" in out and "phase 1 train: 6 steps" in out and "s/step" in out
    assert "estimated total" in out and not wd.exists()


def _save_images(folder, arrays):
    from jaxproto.viz.overlays import save_png

    folder.mkdir()
    for i, a in enumerate(arrays):
        save_png(str(folder / f"img{i}.png"), a)
    return folder


def _save_dicom(path, pixels, modality, body_part):
    import pydicom

    from jaxproto.data.write_real_format import write_dicom

    write_dicom(str(path), pixels)
    ds = pydicom.dcmread(str(path))
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.save_as(str(path))


def test_ood_statistics_are_covered_by_the_export_checksum(run, tmp_path, capsys):
    exp = tmp_path / "exp"
    code, err = _export(run, exp, capsys, which="latest")
    assert code == 0, err
    assert "ood.json" in json.loads((exp / "manifest.json").read_text())["extra_files"]
    inference.read_export(str(exp))
    stats = json.loads((exp / "ood.json").read_text())
    stats["threshold"] = 1e9  # would let every foreign image through
    (exp / "ood.json").write_text(json.dumps(stats))
    with pytest.raises(inference.ExportError, match="checksum mismatch"):
        inference.read_export(str(exp))


def test_foreign_input_is_flagged_not_diagnosed(run, tmp_path, capsys):
    """The synthetic fundus model against fundus test images, synthetic chest X-rays, noise,
    a 4x4 image and DICOMs of other modalities: the foreign ones get in_distribution=false and
    are left out with --reject_ood; explain warns at the top of the report."""
    import csv

    import numpy as np

    from jaxproto import explain, predict
    from jaxproto.backbones import backbone_channels
    from jaxproto.core import ood
    from jaxproto.data.images import load_image
    from jaxproto.data.procedural import render_path
    from jaxproto.data.synthetic import synthetic_index

    exp = tmp_path / "exp"
    code, err = _export(run, exp, capsys, which="latest")
    assert code == 0, err
    stats = json.loads((exp / "ood.json").read_text())
    assert stats["num_samples"] == 16 and stats["threshold"] > 0
    model = json.loads((run / "config.json").read_text())["model"]
    width = backbone_channels(model["backbone"], model["tap"])  # the pooled final backbone map
    assert stats["keys"] == ["features"] and len(stats["mean"]) == width
    assert stats["imaging"]["modality"] == ["OP", "XC"]  # synthetic ODIR: fundus photographs
    assert stats["imaging"]["body_part"] == ["EYE"]
    cfg = json.loads((run / "config.json").read_text())["data"]
    fundus = [load_image(r.path) for r in synthetic_index(cfg).split("test")]
    cxr_cfg = {"like": "chestxray14", "num_train": 4, "num_test": 1, "image_size": 32, "seed": 3}
    cxr = [render_path(r.path) for r in synthetic_index(cxr_cfg).split("train")]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    tiny = [np.full((4, 4, 3), 128, np.uint8)]
    groups = {
        "fundus": _save_images(tmp_path / "fundus", fundus),
        "cxr": _save_images(tmp_path / "cxr", cxr),
        "noise": _save_images(tmp_path / "noise", noise),
        "tiny": _save_images(tmp_path / "tiny", tiny),
        "dicom": tmp_path / "dicom",
    }
    dicoms = {"ct.dcm": ("CT", "CHEST"), "cr.dcm": ("CR", "CHEST"), "op.dcm": ("OP", "HAND")}
    for name, (modality, part) in dicoms.items():
        _save_dicom(groups["dicom"] / name, fundus[0], modality, part)
    out = tmp_path / "p.csv"
    argv = ["--export", str(exp), "--images", *map(str, groups.values()), "--out", str(out)]
    assert cli.run(predict.main, argv) == 0
    probs = list(csv.DictReader(open(out)))
    rows = list(csv.DictReader(open(tmp_path / "p_ood.csv")))
    assert [r["image"] for r in rows] == [r["image"] for r in probs]
    assert "in_distribution" not in probs[0]  # the method's columns stay as they are
    flag = {
        name: [r["in_distribution"] for r in rows if f"/{name}/" in r["image"]] for name in groups
    }
    scores = {n: [round(float(r["ood_score"]), 2) for r in rows if f"/{n}/" in r["image"]]
              for n in groups}  # fmt: skip
    why = {os.path.relpath(r["image"], tmp_path): r["ood_reason"] for r in rows}
    # Pooled-feature Mahalanobis of a 6-step model: every chest X-ray, noise image and the 4x4
    # image are flagged, few fundus test images.
    assert flag["cxr"] == ["false"] * 4, (scores, stats["threshold"])
    assert flag["noise"] == ["false"] * 4, (scores, stats["threshold"])
    assert flag["tiny"] == ["false"] and "4x4 pixels" in why["tiny/img0.png"]
    assert flag["fundus"].count("true") >= 6, (scores, stats["threshold"])
    assert min(scores["cxr"]) > np.median(scores["fundus"])
    assert all(float(r["ood_score"]) >= 0 for r in rows)
    # A DICOM is checked against what the model was trained on before any score.
    assert flag["dicom"] == ["false"] * 3
    assert "Modality (0008,0060) is 'CT'" in why["dicom/ct.dcm"] and "OP, XC" in why["dicom/ct.dcm"]
    assert "Modality (0008,0060) is 'CR'" in why["dicom/cr.dcm"]
    part = why["dicom/op.dcm"]
    assert "BodyPartExamined (0018,0015) is 'HAND'" in part and "EYE" in part
    # Statistics of an older export name their keys (logits): they keep scoring logits. Older
    # exports wrote ood.json after the manifest, outside the checksum.
    old = tmp_path / "old"
    config, _, state = inference.load_for_inference(workdir=str(run), which="latest")
    inference.write_export(str(old), config, workdir.read_dataset_meta(str(run)), state)
    n_classes = len(json.loads((exp / "dataset.json").read_text())["class_names"])
    legacy = ood.fit(rng.normal(size=(16, n_classes)), ["logits"])
    (old / "ood.json").write_text(json.dumps(legacy))
    old_argv = ["--export", str(old), "--images", str(groups["fundus"]), "--out"]
    assert cli.run(predict.main, [*old_argv, str(tmp_path / "o.csv")]) == 0
    old_rows = list(csv.DictReader(open(tmp_path / "o_ood.csv")))
    assert len(old_rows) == 8 and all(float(r["ood_score"]) > 0 for r in old_rows)
    assert cli.run(predict.main, [*argv[:-1], str(tmp_path / "r.csv"), "--reject_ood"]) == 0
    kept = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["image"] for r in kept] == [
        r["image"] for r in rows if r["in_distribution"] == "true"
    ]
    skipped = json.loads((tmp_path / "r_skipped.json").read_text())
    n_out = sum(r["in_distribution"] == "false" for r in rows)
    assert len(skipped) == n_out and all("out of distribution" in s["error"] for s in skipped)
    page = tmp_path / "report.html"
    page.write_text("<html><body><h1>Report</h1></body></html>")
    explain.warn_at_top(str(page), skipped[0]["error"])
    text = page.read_text()
    assert text.index("does not look like the images") < text.index("<h1>Report")


def test_inference_reads_the_config_a_resumed_run_was_last_trained_with(run, tmp_path):
    """A run resumed with an allowed change (config.1.json beside config.json) is evaluated,
    explained and exported with the newest config, not the first one."""
    wd = _copy(run, tmp_path)
    saved = json.loads((wd / "config.json").read_text())
    saved["train"]["eval_batch_size"] = int(saved["train"]["eval_batch_size"]) + 1
    (wd / "config.1.json").write_text(json.dumps(saved))
    config, _, _ = inference.load_for_inference(workdir=str(wd), which="latest")
    assert config.train.eval_batch_size == saved["train"]["eval_batch_size"]
    assert workdir.latest_config(str(wd)).train.eval_batch_size == saved["train"]["eval_batch_size"]
    (wd / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        workdir.latest_config(str(wd))


def test_a_run_saved_before_an_added_key_resumes_with_its_old_behaviour(run, repo_root, tmp_path):
    """config_lib.ADDED_KEYS: a workdir whose config.json lacks model.conv1x1,
    model.stem_conv and model.conv_backend (written before the keys existed) is read and
    resumed with "xla", the behaviour it was trained with."""
    wd = _copy(run, tmp_path)
    saved = json.loads((wd / "config.json").read_text())
    keys = ("conv1x1", "stem_conv", "conv_backend")
    for key in keys:
        del saved["model"][key]
    (wd / "config.json").write_text(json.dumps(saved))
    loaded = config_lib.load_saved_config(str(wd))
    assert [loaded.model[k] for k in keys] == ["xla"] * 3
    faster = [("model.conv1x1", "matmul"), ("model.stem_conv", "im2col_grad"),
              ("model.conv_backend", "onednn")]  # fmt: skip
    resumed = _config(repo_root, faster)
    assert workdir.adopt_added_keys(str(wd), resumed) == [f"model.{k}" for k in keys]
    assert [resumed.model[k] for k in keys] == ["xla"] * 3
    assert workdir.check_config_change(str(wd), resumed) == []
    assert workdir.record_config(str(wd), resumed).endswith("config.json")
    assert not (wd / "config.1.json").exists()
    fresh = _config(repo_root, faster)
    assert workdir.adopt_added_keys(str(tmp_path / "new"), fresh) == []
    assert [fresh.model[k] for k in keys] == ["matmul", "im2col_grad", "onednn"]

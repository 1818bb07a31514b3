"""CIPL end to end, flax-example style: train the synthetic config's whole schedule (warm-up,
main with the EMA teacher, push, last layer) with tiny shapes, evaluate, export, predict
(CSV of foreground probabilities), explain with the push atlas."""

import csv
import json
import os

import jax
import numpy as np

from jaxproto import evaluate, explain, export, predict
from jaxproto.common import cli
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.methods.cipl import config as cipl_config
from jaxproto.viz.overlays import save_png


def test_train_evaluate_export_predict_explain(tmp_path, capsys):
    config = cipl_config.get_config("odir", "synthetic,image_size=32,prototypes_per_class=1")
    config.model.proto_dim = 8
    config.data.num_train, config.data.num_test = 16, 8
    config.train.update(batch_size=8, eval_batch_size=8, push_batch_size=8)
    config.train.update(pretrain_epochs=0, warmup_epochs=1, num_epochs=2, push_epochs=[1])
    workdir, exp = str(tmp_path / "run"), str(tmp_path / "export")
    trainer = build_trainer(config, workdir, devices=jax.devices()[:1])
    assert [p.name for p in trainer.method.phases()] == ["warmup", "main", "last_layer@1"]
    trainer.train()
    atlas = json.load(open(os.path.join(workdir, "push", "1", "atlas.json")))
    entries = atlas["entries"] if isinstance(atlas, dict) else atlas
    sources = [e["source_image_id"] for e in entries]
    assert entries and len(set(sources)) == len(sources)  # no source image reused

    assert cli.run(evaluate.main, ["--workdir", workdir]) == 0
    result = json.load(open(os.path.join(workdir, "eval", "test.json")))
    assert {"mean_auc", "pointing_game", "loc_iou"} <= set(result)
    assert "mean_auc" in capsys.readouterr().out
    assert cli.run(export.main, ["--workdir", workdir, "--out", exp]) == 0

    images = tmp_path / "images"
    images.mkdir()
    for i, r in enumerate(trainer.index.split("test")[:3]):
        save_png(str(images / f"img{i}.png"), load_image(r.path))
    out_csv = str(tmp_path / "preds.csv")
    argv = ["--export", exp, "--images", str(images), "--out", out_csv, "--batch_size", "2"]
    assert cli.run(predict.main, argv) == 0
    rows = list(csv.reader(open(out_csv)))
    names = trainer.index.class_names
    assert rows[0] == ["image", *(n for k, n in enumerate(names) if k != 7)] and len(rows) == 4
    probs = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert np.all((probs > 0) & (probs < 1))

    report = tmp_path / "report"
    argv = ["--workdir", workdir, "--image", str(images / "img0.png"), "--out", str(report)]
    assert cli.run(explain.main, argv + ["--box", "2,2,10,10"]) == 0
    saved = json.loads((report / "explanation.json").read_text())
    assert saved["atlas"] == os.path.join(workdir, "push", "1")
    assert saved["predicted"] and (report / "report.html").exists()
    for item in saved["predicted"][0]["prototypes"]:
        assert (report / item["figure"]).exists()

"""X-MIR end to end, flax-example style: train a few steps of the synthetic config with tiny
shapes, evaluate, export, predict (CSV + embeddings file), retrieve index + query."""

import csv
import json
import os

import jax
import numpy as np

from jaxproto import evaluate, export, predict, retrieve
from jaxproto.common import cli
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.methods.xmir import config as xmir_config
from jaxproto.viz.overlays import save_png


def test_train_evaluate_export_predict_retrieve(tmp_path, capsys):
    config = xmir_config.get_config("isic2017", "synthetic,runlocal,image_size=32")
    config.train.max_steps = 2
    workdir, exp = str(tmp_path / "run"), str(tmp_path / "export")
    trainer = build_trainer(config, workdir, devices=jax.devices()[:1])
    trainer.train()

    assert cli.run(evaluate.main, ["--workdir", workdir]) == 0
    result = json.load(open(os.path.join(workdir, "eval", "test.json")))
    assert set(result) == {"R@1", "P@1", "R@5", "P@5", "R@10", "P@10", "mAP", "MAP@R"}
    assert "leave-one-out retrieval" in capsys.readouterr().out
    assert cli.run(export.main, ["--workdir", workdir, "--out", exp]) == 0

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i, r in enumerate(trainer.index.split("test")[:5]):
        save_png(str(gallery / f"img{i}.png"), load_image(r.path))
    out_csv = str(tmp_path / "preds.csv")
    argv = ["--export", exp, "--images", str(gallery), "--out", out_csv, "--batch_size", "2"]
    assert cli.run(predict.main, argv) == 0
    rows = list(csv.reader(open(out_csv)))
    assert rows[0] == ["image"] and len(rows) == 6
    emb = np.load(str(tmp_path / "preds_embeddings.npy"))
    assert emb.shape == (5, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    index = str(tmp_path / "index")
    argv = ["index", "--export", exp, "--images", str(gallery), "--out", index]
    assert cli.run(retrieve.main, argv + ["--batch-size", "4"]) == 0
    # the gallery embeddings are the ones predict wrote, row for row
    np.testing.assert_allclose(np.load(os.path.join(index, "embeddings.npy")), emb, atol=1e-5)
    out = tmp_path / "query"
    argv = ["query", "--index", index, "--image", str(gallery / "img3.png"), "--k", "3"]
    argv += ["--saliency", "simcam", "--saliency-top", "1", "--out", str(out)]
    assert cli.run(retrieve.main, argv) == 0
    neighbours = json.loads((out / "results.json").read_text())["neighbours"]
    assert neighbours[0]["file"].endswith("img3.png") and neighbours[0]["distance"] < 1e-3
    d = np.linalg.norm(emb - emb[3], axis=1)
    assert [n["file"][-8:] for n in neighbours] == [f"img{j}.png" for j in np.argsort(d)[:3]]
    assert np.load(out / "rank001_simcam.npy").shape == (32, 32)

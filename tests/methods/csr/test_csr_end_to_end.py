"""CSR end to end, flax-example style: train a few steps of each stage of the synthetic config
with tiny shapes, evaluate, export, predict (CSV + concept probabilities), explain with a
negative box and a rejected concept."""

import csv
import json
import os

import jax
import numpy as np

from jaxproto import evaluate, explain, export, predict
from jaxproto.common import cli
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.methods.csr import config as csr_config
from jaxproto.viz.overlays import save_png


def test_train_evaluate_export_predict_explain(tmp_path, capsys):
    config = csr_config.get_config("tbx11k", "synthetic,runlocal,image_size=64")
    config.data.num_train, config.data.num_test = 32, 8
    config.model.prototypes_per_concept, config.model.proj_dim = 4, 16
    config.train.eval_batch_size = 16
    workdir, exp = str(tmp_path / "run"), str(tmp_path / "export")
    trainer = build_trainer(config, workdir, devices=jax.devices()[:1])
    trainer.train()
    assert os.path.isfile(os.path.join(workdir, "atlas", "atlas.html"))

    assert cli.run(evaluate.main, ["--workdir", workdir]) == 0
    result = json.load(open(os.path.join(workdir, "eval", "test.json")))
    assert {"macro_f1", "concept_f1", "pointing_game", "pointing_game_grid"} <= set(result)
    assert result["num_prototypes"] == 5 * 4 and result["num_explanations"] == 5
    assert "pointing_game" in capsys.readouterr().out
    assert cli.run(export.main, ["--workdir", workdir, "--out", exp]) == 0

    images = tmp_path / "images"
    images.mkdir()
    test = trainer.index.split("test")[:3]
    for i, r in enumerate(test):
        save_png(str(images / f"img{i}.png"), load_image(r.path))
    out_csv = str(tmp_path / "preds.csv")
    argv = ["--export", exp, "--images", str(images), "--out", out_csv, "--batch_size", "2"]
    assert cli.run(predict.main, argv) == 0
    rows = list(csv.reader(open(out_csv)))
    assert rows[0] == ["image", *trainer.index.class_names] and len(rows) == 4
    probs = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    concepts = np.load(str(tmp_path / "preds_concept_probs.npy"))
    assert concepts.shape == (3, 5) and np.all((concepts >= 0) & (concepts <= 1))

    report = tmp_path / "report"
    argv = ["--export", exp, "--image", str(images / "img0.png"), "--out", str(report)]
    argv += ["--negative_box", "0,0,20,20", "--reject_concept", "1"]
    assert cli.run(explain.main, argv) == 0
    saved = json.loads((report / "result.json").read_text())
    assert saved["interaction"]["applied"] and saved["interaction"]["boxes_neg"]
    assert saved["concepts"][1]["rejected"] and saved["concepts"][1]["after"]["score"] == 0.0
    assert set(saved["probs_after"]) == set(trainer.index.class_names)
    assert (report / "report.html").exists()
    # An unknown concept is one clear error (exit 2), not a traceback.
    argv[-1] = "no_such_concept"
    assert cli.run(explain.main, argv) == 2
    assert "unknown concept" in capsys.readouterr().err


def test_stage_two_epoch_phases_read_one_stream(tmp_path):
    config = csr_config.get_config("tbx11k", "synthetic,runlocal,image_size=32")
    config.data.num_train, config.data.num_test = 24, 8
    config.train.batch_size, config.optim.stage2.epochs = 8, 2.0
    trainer = build_trainer(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    names = [p.name for p in trainer.phases]
    first, second = names.index("prototypes_1"), names.index("prototypes_2")
    whole = trainer.train_stream(first)  # as if stage 2 were one phase
    for _ in range(trainer.phase_steps[first]):
        next(whole)
    expected, got = next(whole), next(trainer.train_stream(second))
    np.testing.assert_array_equal(got["image"], expected["image"])
    assert not np.array_equal(got["image"], next(trainer.train_stream(first))["image"])

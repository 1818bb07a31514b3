"""Med-MICN end to end through the CLIs on tiny synthetic concept-rule data: train a few steps,
evaluate (both protocols + the global rule table), export, predict, explain (bars + rule +
Grad-CAM of one prediction)."""

import csv
import json
import os

import jax
import numpy as np
import pytest

from jaxproto import evaluate, explain, export, predict
from jaxproto.common import cli
from jaxproto.common.errors import ConfigError
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.methods.medmicn import config as medmicn_config
from jaxproto.viz.overlays import save_png


def test_train_evaluate_export_predict_explain(tmp_path, capsys):
    config = medmicn_config.get_config("ddi", "synthetic,runlocal,image_size=32")
    config.model.fusion_hidden, config.model.pre_proj_dim = [16], 8
    config.data.num_train, config.data.num_test, config.data.num_val = 16, 8, 8
    config.train.batch_size = config.train.eval_batch_size = 8
    workdir, exp = str(tmp_path / "run"), str(tmp_path / "export")
    trainer = build_trainer(config, workdir, devices=jax.devices()[:1])
    trainer.train()
    with pytest.raises(ConfigError, match="eval_batch_size"):  # train-mode BN on 1 value
        trainer.method.evaluate({"faithful_valid": np.array([True, False])}, [])

    assert cli.run(evaluate.main, ["--workdir", workdir]) == 0
    result = json.load(open(os.path.join(workdir, "eval", "test.json")))
    assert result["protocol"] == "fair" and result["task_accuracy"] == result["fair/task_accuracy"]
    for prot in ("fair", "faithful"):
        assert 0.0 <= result[f"{prot}/concept_accuracy"] <= 1.0
    assert set(result["rules"]) == {"benign", "malignant"}
    rules = result["rules"]
    assert rules["malignant"]["planted"] == ["Papule & ~Xerosis"]
    assert rules["benign"]["planted"] == ["~Papule", "Xerosis"]  # one check per disjunct
    assert len(rules["benign"]["check"]["alternatives"]) == 2
    assert result["planted_rules_ok"] == float(all(r["check"]["ok"] for r in rules.values()))
    out = capsys.readouterr().out
    assert "faithful" in out and "Global rules per class" in out

    assert cli.run(export.main, ["--workdir", workdir, "--out", exp]) == 0
    images = tmp_path / "images"
    images.mkdir()
    for i, r in enumerate(trainer.index.split("test")[:2]):
        save_png(str(images / f"img{i}.png"), load_image(r.path))
    out_csv = str(tmp_path / "preds.csv")
    argv = ["--export", exp, "--images", str(images), "--out", out_csv, "--batch_size", "2"]
    assert cli.run(predict.main, argv) == 0
    rows = list(csv.reader(open(out_csv)))
    assert "p_malignant" in rows[0] and "c_Papule" in rows[0] and len(rows) == 3
    p = np.array([float(v) for v in rows[1][rows[0].index("p_benign") :][:2]])
    assert np.all((p >= 0) & (p <= 1))

    report = tmp_path / "report"
    argv = ["--export", exp, "--image", str(images / "img0.png"), "--out", str(report)]
    assert cli.run(explain.main, argv) == 0
    info = json.loads((report / "explanation.json").read_text())
    probs = info["class_probabilities"]
    assert info["predicted_class"] == max(probs, key=probs.get)
    assert len(info["concept_probabilities"]) == 13
    if info["rule_active"]:  # the rule shown is the predicted class's, literals its concepts'
        assert info["rule"].startswith(info["predicted_class"] + " <=")
        for lit in info["rule_literals"]:
            assert info["concept_probabilities"][lit["concept"]] == lit["probability"]
    html = (report / "report.html").read_text()
    assert info["predicted_class"] in html and "bars.png" in html and "gradcam.png" in html
    for name in ("bars.png", "gradcam.png", "concept_maps.png"):
        assert (report / name).stat().st_size > 0

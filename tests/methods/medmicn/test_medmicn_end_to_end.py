"""Med-MICN end to end on tiny synthetic concept-rule data: train a few steps, evaluate (both
protocols + the global rule table), explain (bars + rule + Grad-CAM of one prediction), export,
predict."""

import json
import os

import jax
import numpy as np
import pytest

from jaxproto import export as export_lib
from jaxproto.common import config as config_lib
from jaxproto.core import restore, workdir
from jaxproto.core.method import ExplainRequest
from jaxproto.core.trainer import Trainer
from jaxproto.data.images import load_image
from jaxproto.viz.overlays import save_png


@pytest.fixture(scope="module")
def run(tmp_path_factory, repo_root):
    wd = tmp_path_factory.mktemp("medmicn")
    spec = os.path.join(repo_root, "configs", "medmicn_ddi.py") + ":synthetic,runlocal"
    config = config_lib.build_config(
        spec,
        [
            ("model.image_size", "32"),
            ("model.fusion_hidden", "[16]"),
            ("model.pre_proj_dim", "8"),
            ("model.dcr_temperature", "1.0"),
            ("data.num_train", "16"),
            ("data.num_test", "8"),
            ("data.num_val", "8"),
            ("train.batch_size", "8"),
            ("train.eval_batch_size", "8"),
            ("optim.epochs", "1.0"),
        ],
    )
    trainer = Trainer(config, str(wd), devices=jax.devices()[:1])
    trainer.train()
    return trainer, wd


def test_train_evaluate_reports_both_protocols_and_rules(run):
    trainer, wd = run
    _, method, state = restore.load_for_inference(str(wd))
    result = trainer.evaluate(state, "test")
    assert result["protocol"] == "fair"
    for prot in ("fair", "faithful"):
        assert 0.0 <= result[f"{prot}/task_accuracy"] <= 1.0
        assert 0.0 <= result[f"{prot}/concept_accuracy"] <= 1.0
    assert result["task_accuracy"] == result["fair/task_accuracy"]
    assert set(result["rules"]) == {"benign", "malignant"}
    assert result["rules"]["malignant"]["planted"] == ["Papule & ~Xerosis"]
    text = method.summarize(result)
    assert "faithful" in text and "Global rules per class" in text
    json.dumps(result)  # evaluate writes it as JSON


def test_explain_report_belongs_to_one_prediction(run, tmp_path):
    trainer, wd = run
    config, method, state = restore.load_for_inference(str(wd))
    rec = trainer.index.split("test")[0]
    image = save_png(str(tmp_path / "x.png"), load_image(rec.path))
    files = method.explain(
        state, ExplainRequest(image=image, out_dir=str(tmp_path / "rep"), source=str(wd))
    )
    for role in ("html", "json", "bars", "gradcam", "concept_maps"):
        assert os.path.isfile(files[role]), role
    info = json.load(open(files["json"]))
    probs = info["class_probabilities"]
    assert info["predicted_class"] == max(probs, key=probs.get)
    assert len(info["concept_probabilities"]) == 13
    if info["rule_active"]:
        assert info["rule"].startswith(info["predicted_class"] + " <=")
        for lit in info["rule_literals"]:
            assert info["concept_probabilities"][lit["concept"]] == pytest.approx(
                lit["probability"]
            )
    html = open(files["html"]).read()
    assert info["predicted_class"] in html and "bars.png" in html and "gradcam.png" in html


def test_export_then_predict_matches_the_workdir(run, tmp_path):
    from jaxproto.predict import predict_files

    trainer, wd = run
    config, method, state = restore.load_for_inference(str(wd))
    out = tmp_path / "exp"
    export_lib.write_export(str(out), config, workdir.read_dataset_meta(str(wd)), state)
    _, method_e, state_e = restore.load_for_inference(export=str(out))
    rec = trainer.index.split("test")[:2]
    paths = [save_png(str(tmp_path / f"{i}.png"), load_image(r.path)) for i, r in enumerate(rec)]
    kept, preds, _ = predict_files(method_e, state_e, paths, batch_size=2, skip_bad=False)
    assert kept == paths
    x = np.stack([method.eval_example(r)["image"] for r in rec])
    ref = jax.jit(method.predict)(state, {"image": x})
    np.testing.assert_allclose(preds["probs"], np.asarray(ref["probs"]), atol=1e-5)
    cols = method_e.prediction_columns(preds)
    assert "p_malignant" in cols and "c_Papule" in cols

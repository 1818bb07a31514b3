"""Every evidence page opened in headless Chromium (marker ``browser``): the CIPL report (from an
export, with the prototype source panels) and atlas, the CSR explanation and the X-MIR query
page, each built from a tiny synthetic run here. Every image must load and carry alt text, no
external resource may be requested, and the class names, decisions, thresholds and colour-bar
labels must be on the page; screenshots are saved as artefacts."""

import json
import os

import jax
import pytest

from configs import xmir_isic
from jaxproto import explain, inference, retrieve
from jaxproto.common import cli
from jaxproto.core import workdir as workdir_lib
from jaxproto.core.method import ExplainRequest
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.methods.cipl import config as cipl_config
from jaxproto.methods.csr import config as csr_config
from jaxproto.viz.overlays import save_png

pytestmark = pytest.mark.browser


def _train_export(config, root):
    """Trains ``config`` in ``root/run``, saves its thresholds, exports it to ``root/export``;
    returns (trainer, workdir, export)."""
    workdir, exp = str(root / "run"), str(root / "export")
    trainer = build_trainer(config, workdir, devices=jax.devices()[:1])
    trainer.train()
    inference.save_thresholds(workdir)
    config, _, state = inference.load_for_inference(workdir=workdir)
    inference.write_export(exp, config, workdir_lib.read_dataset_meta(workdir), state, workdir)
    return trainer, workdir, exp


def _test_image(trainer, root, k=0):
    path = str(root / f"test{k}.png")
    save_png(path, load_image(trainer.index.split("test")[k].path))
    return path


def _decision_texts(decisions):
    """Class names, and for each class with a threshold the threshold and the decision."""
    out = []
    for row in decisions:
        out.append(row["class"])
        if row["threshold"] is not None:
            out.append(f"{row['threshold']:.3g}")
    return out


def test_cipl_report_from_export_and_atlas(tmp_path, page_check, artifacts):
    config = cipl_config.get_config("odir", "synthetic,image_size=32,prototypes_per_class=1")
    config.model.proto_dim = 8
    config.data.num_train, config.data.num_test = 16, 8
    config.train.update(batch_size=8, eval_batch_size=8, push_batch_size=8)
    config.train.update(pretrain_epochs=0, warmup_epochs=1, num_epochs=2, push_epochs=[1])
    trainer, _, exp = _train_export(config, tmp_path)
    assert os.path.isfile(os.path.join(exp, "atlas", "atlas.html"))
    image, out = _test_image(trainer, tmp_path), str(tmp_path / "report")
    assert cli.run(explain.main, ["--export", exp, "--image", image, "--out", out]) == 0
    twin = json.load(open(os.path.join(out, "report.json")))
    decisions = twin["sections"][0]["decisions"]
    assert any(r["threshold"] is not None for r in decisions)
    texts = _decision_texts(decisions) + ["Normal", "positive", "negative", "Threshold"]
    texts += ["prototype p", "from training image", "similarity exp(-d", "all prototypes"]
    page_check(os.path.join(out, "report.html"), texts, str(artifacts / "cipl_report.png"))
    atlas = os.path.join(exp, "atlas", "atlas.html")
    entry = json.load(open(os.path.join(exp, "atlas", "atlas.json")))["entries"][0]
    texts = [entry["class_name"], entry["source_image_id"], "contour", "log similarity"]
    page_check(atlas, texts, str(artifacts / "cipl_atlas.png"))


def test_csr_explanation_page(tmp_path, page_check, artifacts):
    config = csr_config.get_config("tbx11k", "synthetic,runlocal,image_size=64")
    config.data.num_train, config.data.num_test = 32, 8
    config.model.prototypes_per_concept, config.model.proj_dim = 4, 16
    config.train.eval_batch_size = 16
    trainer, _, exp = _train_export(config, tmp_path)
    image, out = _test_image(trainer, tmp_path), str(tmp_path / "report")
    _, method, state = inference.load_for_inference(export=exp)
    request = ExplainRequest(image, out, exp, negative_boxes=((0.0, 0.0, 20.0, 20.0),))
    method.explain(state, request)
    result = json.load(open(os.path.join(out, "result.json")))
    assert any(r["threshold"] is not None for r in result["decisions_before"])
    texts = _decision_texts(result["decisions_before"]) + ["Decision", "Threshold"]
    texts += ["cosine similarity to prototype", "blue = low, red = high"]
    texts += [c["concept"] for c in result["concepts"]]
    page_check(os.path.join(out, "report.html"), texts, str(artifacts / "csr_report.png"))


def test_xmir_query_page(tmp_path, page_check, artifacts):
    from jaxproto.data.synthetic import synthetic_index

    config = xmir_isic.get_config("synthetic,runlocal,image_size=32")
    config.train.max_steps = 2
    config.saliency.sbsm_window, config.saliency.sbsm_stride = 8, 8
    workdir = str(tmp_path / "run")
    build_trainer(config, workdir, devices=jax.devices()[:1]).train()
    index = synthetic_index(config.data)
    gallery = tmp_path / "gallery"
    for i, r in enumerate(index.split("test")[:9]):
        folder = gallery / index.class_names[int(r.labels.argmax())]
        folder.mkdir(parents=True, exist_ok=True)
        save_png(str(folder / f"img{i}.png"), load_image(r.path))
    query = str(next(iter(sorted(gallery.rglob("*.png")))))
    idx, out = str(tmp_path / "index"), str(tmp_path / "query")
    argv = ["index", "--workdir", workdir, "--images", str(gallery), "--out", idx]
    assert cli.run(retrieve.main, argv) == 0
    argv = ["query", "--index", idx, "--image", query, "--k", "5", "--saliency-top", "2"]
    assert cli.run(retrieve.main, argv + ["--out", out]) == 0
    result = json.load(open(os.path.join(out, "results.json")))
    assert all(n["diagnosis"] in index.class_names for n in result["neighbours"])
    assert " of 5 nearest cases are " in result["summary"]
    texts = [result["summary"], "Threshold", "Decision", "0.5"]
    texts += [n["diagnosis"] for n in result["neighbours"]]
    texts += [f"{n['distance']:.4g}" for n in result["neighbours"]]
    text = page_check(os.path.join(out, "index.html"), texts, str(artifacts / "xmir_query.png"))
    shown = [s for n in result["neighbours"] for s in n.get("saliency", {}).values()]
    if not all(all(s["uninformative"]) for s in shown):
        assert "min-max normalised per map" in text  # the colour bar of a drawn map

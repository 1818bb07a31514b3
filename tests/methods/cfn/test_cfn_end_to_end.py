"""CFN end to end, flax-example style, with tiny shapes: train the opaque model a few steps on
synthetic primitives, run every concept stage, then evaluate (opaque beside CBM), explain,
export and predict from the export; the CBM numbers each CLI shows must be the ones the CBM
stage computed. Resume: a run killed inside two stages and rerun ends with the same files as an
uninterrupted run."""

import csv
import json
import os
import re

import jax
import numpy as np
import pytest

from jaxproto import evaluate, explain, export, predict
from jaxproto.common import cli
from jaxproto.data.images import load_image
from jaxproto.methods import build_trainer
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.methods.cfn import config as cfn_config
from jaxproto.methods.cfn import stages
from jaxproto.viz.overlays import save_png


def tiny_config(tmp_path):
    config = cfn_config.get_config("ham10000", "synthetic,runlocal,image_size=32")
    config.data.cache_dir = str(tmp_path / "data")
    config.data.num_train, config.data.num_val, config.data.num_test = 48, 24, 24
    config.cfn.sae.steps, config.cfn.sae.expansion = 30, 2
    config.cfn.cav.min_negatives = 10
    config.cfn.cbm.max_iter, config.cfn.cbm.bisection_rounds = 20, 0
    return config


def test_train_stages_evaluate_explain_export_predict(tmp_path, capsys):
    config = tiny_config(tmp_path)
    workdir, exp = str(tmp_path / "run"), str(tmp_path / "export")
    trainer = build_trainer(config, workdir, devices=jax.devices()[:1])
    trainer.train()
    for stage in stages.STAGES:
        assert stages.is_done(workdir, stage, stages.stage_keys(config)[stage]), stage
    cbm_dir = stages.stage_dir(workdir, "cbm")
    cbm_test = np.load(os.path.join(cbm_dir, "logits_test.npy"))
    labels = np.load(os.path.join(stages.stage_dir(workdir, "embeddings"), "labels_test.npy"))
    stage_acc = stages.load_json(os.path.join(cbm_dir, "done.json"))["stats"]["test_accuracy"]
    assert stage_acc == cbm_lib.accuracy(labels, cbm_test, False)
    _check_concept_pages(workdir)

    assert cli.run(evaluate.main, ["--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "opaque" in out and "CBM" in out and "concepts:" in out
    result = json.load(open(os.path.join(workdir, "eval", "test.json")))
    assert result["cbm"]["accuracy"] == stage_acc  # evaluate rebuilds what the stage scored
    opaque_test = np.load(os.path.join(stages.stage_dir(workdir, "embeddings"), "logits_test.npy"))
    np.testing.assert_allclose(
        result["opaque"]["accuracy"], cbm_lib.accuracy(labels, opaque_test, False)
    )
    concepts = result["concepts"]
    assert concepts["selected"] <= int(config.cfn.select.k)
    assert 0 < concepts["omp_mean_nonzero"] <= int(config.cfn.omp.n_nonzero)
    assert set(result["classes"]) == set(trainer.index.class_names)

    records = trainer.index.split("test")[:3]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i, r in enumerate(records):
        save_png(str(gallery / f"img{i}.png"), load_image(r.path))
    report = tmp_path / "explain"
    argv = ["--workdir", workdir, "--image", str(gallery / "img0.png"), "--out", str(report)]
    assert cli.run(explain.main, argv) == 0
    ex = json.load(open(report / "explanation.json"))
    probs = cbm_lib.probabilities(cbm_test[:1], False)[0]
    np.testing.assert_allclose(list(ex["probabilities"].values()), probs, rtol=1e-4, atol=1e-6)
    contrib = [c["contribution"] for c in ex["top_concepts"]]
    assert len(contrib) <= 4 and contrib == sorted(contrib, reverse=True)
    assert all(isinstance(c["name"], str) and c["name"] for c in ex["top_concepts"])
    page = json.load(open(report / "report.json"))  # the HTML page's twin
    headings = [s["heading"] for s in page["sections"]]
    assert headings[0].endswith(ex["predicted"]) and headings[-1] == "Not a concept"
    assert [h.split(". ", 1)[1].split(":")[0] for h in headings[1:-1]] == [
        c["name"] for c in ex["top_concepts"]
    ]
    decided = [d["class"] for d in page["sections"][0]["decisions"] if d["decision"]]
    assert decided == [ex["predicted"]] and (report / "report.html").is_file()

    assert cli.run(export.main, ["--workdir", workdir, "--out", exp]) == 0
    assert os.path.isfile(os.path.join(exp, "cfn", "cbm", "cbm.npz"))
    out_csv = str(tmp_path / "preds.csv")
    argv = ["--export", exp, "--images", str(gallery), "--out", out_csv, "--batch_size", "2"]
    assert cli.run(predict.main, argv) == 0
    rows = list(csv.DictReader(open(out_csv)))
    names = trainer.index.class_names
    got = np.array([[float(row[f"cbm_{n}"]) for n in names] for row in rows])
    np.testing.assert_allclose(got, cbm_lib.probabilities(cbm_test[:3], False), atol=1e-4)


def _check_concept_pages(workdir):
    """The index lists every alive latent with its name, selected concepts first, each linked
    to its detail section; every image on the pages has alt text; overlays have a colour bar."""
    naming, rep = stages.stage_dir(workdir, "naming"), stages.stage_dir(workdir, "report")
    alive = np.load(os.path.join(naming, "alive.npy"))
    names = stages.load_json(os.path.join(naming, "names.json"))
    index = stages.load_json(os.path.join(rep, "concepts.json"))
    table = next(s for s in index["sections"] if s.get("id") == "latents")["table"]
    listed = {int(r["latent"]["text"][1:]): r["name"] for r in table}
    assert len(table) == len(alive) and listed == {int(j): names[str(j)] for j in alive}
    selected = [r["in the CBM"] != "not selected" for r in table]
    assert selected == sorted(selected, reverse=True) and sum(selected) > 0
    pages = {}
    for row in table:
        page, anchor = row["latent"]["href"].split("#")
        pages.setdefault(page, []).append(anchor)
    for page, anchors in pages.items():
        text = open(os.path.join(rep, page), encoding="utf-8").read()
        assert all(f'<section id="{a}">' in text for a in anchors), page
        imgs = re.findall(r'<img src="([^"]+)" alt="([^"]*)"', text)
        assert len(imgs) == len(anchors) and all(alt for _, alt in imgs)
        assert all(os.path.isfile(os.path.join(rep, os.path.dirname(page), s)) for s, _ in imgs)
        assert text.count('class="colorbar"') == len(anchors)  # densenet: maps exist


class _Killed(Exception):
    pass


def _kill_when(monkeypatch, module, name, predicate):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        if predicate(*args):
            raise _Killed(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _files(workdir):
    root = os.path.join(workdir, "cfn")
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


@pytest.mark.slow
def test_killed_in_stages_resumes_to_the_same_artefacts(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    build_trainer(config, ref, devices=jax.devices()[:1]).train()

    # killed in the embedding pass after the train split, then in the CBM's C search
    with monkeypatch.context() as m:
        _kill_when(m, stages, "_write_json", lambda path, obj: path.endswith("ids_val.json"))
        with pytest.raises(_Killed):
            build_trainer(config, run, devices=jax.devices()[:1]).train()
    partial = stages.stage_dir(run, "embeddings") + ".partial"
    assert os.path.isfile(os.path.join(partial, "train.done"))
    assert not os.path.isfile(os.path.join(partial, "val.done"))
    with monkeypatch.context() as m:
        _kill_when(m, stages.cbm_lib, "search_c", lambda *a: True)
        with pytest.raises(_Killed):
            build_trainer(config, run, devices=jax.devices()[:1]).train()
    assert os.path.isdir(stages.stage_dir(run, "cbm") + ".partial")
    assert stages.is_done(run, "selection", stages.stage_keys(config)["selection"])
    build_trainer(config, run, devices=jax.devices()[:1]).train()

    assert _files(run) == _files(ref)
    for rel in _files(ref):
        a, b = os.path.join(ref, "cfn", rel), os.path.join(run, "cfn", rel)
        if rel.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b), err_msg=rel)
        else:
            assert open(a, "rb").read() == open(b, "rb").read(), rel

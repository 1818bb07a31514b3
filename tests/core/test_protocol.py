"""Honest model selection by default (issue #19): the validation protocol selects the checkpoint
and the F1 thresholds on a validation split and never looks at the test split while training;
``eval.protocol=paper`` selects on test; evaluation JSONs and pages say which."""

import json
import os

import jax
import pytest

from jaxproto import evaluate, train
from jaxproto.common import cli
from jaxproto.common import config as config_lib
from jaxproto.common.errors import ConfigError
from jaxproto.data import registry
from jaxproto.data.records import BadSampleReport
from jaxproto.methods import build_trainer, resolve_protocol
from tests.tiny_runs import TINY_RUN

TINY = [
    *TINY_RUN,
    ("train.epochs", "2.0"),
    ("train.eval_every_epochs", "0.5"),
    ("train.checkpoint_every_steps", "2"),
    ("train.best_metric", "mean_auc"),
]


def _spec(repo_root):
    return os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"


@pytest.mark.parametrize("protocol, split", [("validation", "val"), ("paper", "test")])
def test_model_selection_follows_the_protocol(repo_root, tmp_path, capsys, protocol, split):
    wd = tmp_path / "wd"
    overrides = [*TINY] if protocol == "validation" else [*TINY, ("eval.protocol", protocol)]
    if protocol == "validation":  # the default; through train, which also saves the thresholds
        argv = ["--config", _spec(repo_root), *(f"--config.{k}={v}" for k, v in overrides)]
        assert cli.run(train.main, [*argv, "--workdir", str(wd)]) == 0
        assert json.loads((wd / "thresholds.json").read_text())["split"] == "val"
    else:
        config = config_lib.build_config(_spec(repo_root), overrides)
        build_trainer(config, str(wd), devices=jax.devices()[:1]).train()
    saved = json.loads((wd / "config.json").read_text())
    assert saved["eval"]["protocol"] == protocol and saved["train"]["eval_split"] == split
    records = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    evals = [r for r in records if r["kind"].startswith("eval_")]
    assert len(evals) >= 3 and {r["kind"] for r in evals} == {f"eval_{split}"}  # never the other
    best = max(r["mean_auc"] for r in evals)
    best_step = next(r["step"] for r in evals if r["mean_auc"] == best)  # the first to reach it
    capsys.readouterr()
    assert cli.run(evaluate.main, ["--workdir", str(wd)]) == 0
    note = f"{protocol} protocol, checkpoint selected by the best mean_auc on the {split} split"
    assert f"{note} (best checkpoint, step {best_step})" in capsys.readouterr().out
    result = json.loads((wd / "eval" / "test.json").read_text())
    assert result["protocol"] == protocol
    assert result["selection"] == {
        "protocol": protocol,
        "selection_split": split,
        "best_metric": "mean_auc",
        "checkpoint": f"best checkpoint, step {best_step}",
    }
    if protocol == "validation":  # test F1 at the thresholds chosen on val, not on test
        point = result["operating_point"]
        assert point["thresholds_split"] == "val" and 0.0 <= point["mean_f1"] <= 1.0


def test_the_training_set_is_the_same_under_both_protocols(repo_root):
    """Synthetic data: the validation split is extra generated images, train and test as before."""
    splits = {}
    for protocol in ("validation", "paper"):
        config = config_lib.build_config(_spec(repo_root), [*TINY, ("eval.protocol", protocol)])
        resolve_protocol(config)
        index = registry.load_index(config.data, BadSampleReport())
        splits[protocol] = {s: [r.image_id for r in v] for s, v in index.splits.items()}
    assert sorted(splits["validation"]) == ["test", "train", "val"]
    assert sorted(splits["paper"]) == ["test", "train"]
    for split in ("train", "test"):
        assert splits["validation"][split] == splits["paper"][split]
    assert len(splits["validation"]["val"]) == 8
    assert not set(splits["validation"]["val"]) & set(splits["paper"]["train"])


def test_a_method_declares_its_protocols(repo_root):
    config = config_lib.build_config(_spec(repo_root), [("eval.protocol", "fair")])
    with pytest.raises(ConfigError, match="eval.protocol='fair' is unknown.*valid: validation"):
        resolve_protocol(config)
    medmicn = os.path.join(repo_root, "configs", "medmicn_ddi.py") + ":synthetic"
    config = config_lib.build_config(medmicn, [("eval.protocol", "paper")])
    with pytest.raises(ConfigError, match="valid: faithful, fair"):
        resolve_protocol(config)


def test_f1_at_a_threshold_matches_sklearn():
    import numpy as np
    from sklearn.metrics import f1_score

    from jaxproto.core.metrics import f1_score as ours

    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.random(30) < 0.3, rng.random(30) < rng.random()
        assert ours(y, p) == pytest.approx(f1_score(y, p, zero_division=0))
    assert ours(np.zeros(4, bool), np.zeros(4, bool)) == 0.0

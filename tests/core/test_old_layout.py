"""Checkpoints and exports written before the layout move still load and predict the same."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from jaxproto import inference
from jaxproto.common import config as config_lib
from jaxproto.common import trees
from jaxproto.data.records import Record
from jaxproto.methods import build_trainer

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "old_layout")
EXPORTS = ("baseline_odir", "cipl_odir", "csr_tbx11k", "xmir_isic")


def _structures():
    with open(os.path.join(FIXTURES, "state_structure.json")) as f:
        return json.load(f)


# Defaults changed on purpose since the move, set back to the old values to compare the rest:
# CSR's revival variants standardise the task head's input (a head BatchNorm, issue #15).
OLD_DEFAULTS = {
    "configs/csr_tbx11k.py:synthetic": [("model.head_input_bn", "false")],
    "configs/csr_tbx11k.py:clever_hans": [("model.head_input_bn", "false")],
}


@pytest.mark.parametrize("spec", sorted(_structures()))
def test_trainer_state_structure_unchanged(repo_root, tmp_path, spec):
    config = config_lib.build_config(os.path.join(repo_root, spec), OLD_DEFAULTS.get(spec, []))
    trainer = build_trainer(config, str(tmp_path), devices=jax.devices()[:1])
    leaves = jax.tree_util.tree_flatten_with_path(trainer.abstract_state)[0]
    got = [[trees.path_str(p), list(x.shape), str(x.dtype)] for p, x in leaves]
    assert got == _structures()[spec]


@pytest.mark.parametrize("name", EXPORTS)
def test_old_export_loads_and_predicts_the_same(name):
    _, method, state = inference.load_for_inference(export=os.path.join(FIXTURES, f"export_{name}"))
    paths = sorted(glob.glob(os.path.join(FIXTURES, "images", "*.jpg")))
    n_classes, n_concepts = len(method.class_names()), len(method.index.concept_names)
    examples = [
        method.eval_example(
            Record(
                os.path.basename(p),
                p,
                np.eye(n_classes, dtype=np.float32)[0],
                concepts=np.zeros(n_concepts, np.float32) if n_concepts else None,
            )
        )
        for p in paths
    ]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    got = jax.device_get(jax.jit(method.predict)(state, batch))
    want = np.load(os.path.join(FIXTURES, f"preds_{name}.npz"))
    assert set(want.files) <= set(got)
    for key in want.files:
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-5, atol=1e-5)

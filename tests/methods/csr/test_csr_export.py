"""CSR export with ``model.head_input_bn``: ``Method.export_state`` folds the task-head BatchNorm
into the linear head (spec §3.3), and predicting from the export matches the unfolded model."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto import inference
from jaxproto.core import outputs, prediction, workdir
from jaxproto.data.records import DatasetIndex
from jaxproto.methods.csr import config as csr_config
from jaxproto.methods.csr.method import CsrMethod
from jaxproto.viz.overlays import save_png


def test_export_folds_head_bn_and_predicts_the_same(tmp_path):
    config = csr_config.get_config("tbx11k", "synthetic,image_size=32")
    config.model.prototypes_per_concept, config.model.proj_dim = 3, 8
    config.model.head_input_bn = True
    index = DatasetIndex(
        "synthetic",
        ["healthy", "sick", "tb"],
        {},
        multilabel=False,
        concept_names=[f"c{k}" for k in range(5)],
    )
    method = CsrMethod(config, index)
    state = method.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    n = 5 * 3
    # A BatchNorm far from the identity, so that forgetting it would show.
    state["params"]["head_bn"] = {
        "scale": jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=n), jnp.float32),
    }
    state["batch_stats"]["head_bn"] = {
        "mean": jnp.asarray(rng.normal(0.1, 0.05, n), jnp.float32),
        "var": jnp.asarray(rng.uniform(0.001, 0.01, n), jnp.float32),
    }
    state["params"]["task_head"]["kernel"] = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)

    out = str(tmp_path / "export")
    inference.write_export(out, config, workdir.dataset_meta(index), state)
    saved = json.load(open(os.path.join(out, "config.json")))
    assert saved["model"]["head_input_bn"] is False and saved["model"]["head_bias"] is True
    _, loaded, loaded_state = inference.load_for_inference(export=out)
    assert "head_bn" not in loaded_state["params"]
    assert "head_bn" not in loaded_state["batch_stats"]

    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"img{i}.png"))
        save_png(paths[-1], rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _, want, _ = prediction.predict_files(method, state, paths, 2, False)
    _, got, _ = prediction.predict_files(loaded, loaded_state, paths, 2, False)
    assert np.ptp(want[outputs.LOGITS]) > 1.0  # the head does something
    np.testing.assert_allclose(got[outputs.LOGITS], want[outputs.LOGITS], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[outputs.PROBS], want[outputs.PROBS], atol=1e-5)

"""model.compute_dtype: bfloat16 backbone compute with float32 parameters and float32 taps, CIPL
logits in bfloat16 against float32 on a tiny model, and the key validated for every method."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.backbones import build_backbone
from jaxproto.common import config as config_lib
from jaxproto.common.errors import ConfigError
from jaxproto.data.records import DatasetIndex
from jaxproto.methods import build_method
from jaxproto.methods.cipl import config as cipl_config
from jaxproto.methods.cipl.model import build_model

# bfloat16 keeps 8 mantissa bits (relative step 2^-8 ~ 0.4%). On this tiny DenseNet the sigmoid
# embeddings move by ~1e-2, the min distances by ~4e-2 (of ~17) and the logits (|logit| < 0.5)
# by ~1.3e-3; LOGIT_ATOL leaves a 4x margin. float32 against float32 of the same model is exact,
# so the bound is all bfloat16.
LOGIT_ATOL = 5e-3


def _cipl(compute_dtype: str):
    cfg = cipl_config.get_config(
        "chestxray14", "synthetic,backbone=densenet_tiny,image_size=64"
    ).model
    cfg.compute_dtype = compute_dtype
    cfg.prototypes_per_class = 2
    return build_model(cfg, num_classes=4)


def test_bfloat16_cipl_logits_agree_with_float32():
    x = jax.random.uniform(jax.random.key(1), (3, 64, 64, 3), minval=-2.0, maxval=2.0)
    f32, bf16 = _cipl("float32"), _cipl("bfloat16")
    variables = f32.init(jax.random.key(0), x)
    bf16_vars = bf16.init(jax.random.key(0), x)
    # Same parameter tree, every leaf float32 (only the compute is bfloat16).
    assert jax.tree.structure(bf16_vars) == jax.tree.structure(variables)
    assert {leaf.dtype for leaf in jax.tree.leaves(bf16_vars)} == {jnp.dtype(jnp.float32)}
    want = f32.apply(variables, x)
    got = bf16.apply(variables, x)
    for key in ("logits", "distances", "min_distances", "embeddings"):
        assert got[key].dtype == jnp.float32, key
    diff = np.abs(np.asarray(got["logits"]) - np.asarray(want["logits"]))
    assert diff.max() < LOGIT_ATOL, diff.max()
    # The bfloat16 path really ran: the embeddings differ at bfloat16 resolution.
    emb_diff = np.abs(np.asarray(got["embeddings"]) - np.asarray(want["embeddings"])).max()
    assert 1e-5 < emb_diff < 5e-2, emb_diff
    # And its training step (batch statistics) keeps float32 running statistics.
    _, upd = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
    assert {leaf.dtype for leaf in jax.tree.leaves(upd)} == {jnp.dtype(jnp.float32)}


def test_unknown_compute_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.compute_dtype must be one of .*'float16'"):
        build_backbone("resnet_tiny", dtype="float16")


@pytest.mark.parametrize(
    "spec",
    [
        "configs/baseline_odir.py:synthetic",
        "configs/cfn_ham10000.py:synthetic",
        "configs/cipl_chestxray14.py:synthetic",
        "configs/csr_tbx11k.py:synthetic",
        "configs/medmicn_ddi.py:synthetic",
        "configs/xmir_covidx.py:synthetic",
    ],
)
def test_every_method_validates_compute_dtype(spec):
    assert config_lib.build_config(spec).model.compute_dtype == "float32"
    config = config_lib.build_config(spec, [("model.compute_dtype", "float16")])
    multilabel = "medmicn" not in spec  # Med-MICN is single-label
    concepts = ["c1", "c2", "c3"]
    index = DatasetIndex("t", ["a", "b", "c"], {}, multilabel, 2, concepts)
    with pytest.raises(ConfigError, match="model.compute_dtype"):
        method = build_method(config, index)
        jax.eval_shape(method.init, jax.random.key(0))

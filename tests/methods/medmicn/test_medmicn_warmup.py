"""Med-MICN's DCR warm-up (``optim.dcr_warmup_epochs``): a first phase without the neural loss,
then the joint rest, against the faithful single joint phase."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.common.errors import ConfigError
from jaxproto.data import synthetic
from jaxproto.methods import build_method
from jaxproto.methods.medmicn import config as medmicn_config


def _method(arg="synthetic,runlocal,image_size=32", **optim):
    config = medmicn_config.get_config("ddi", arg)
    config.model.fusion_hidden, config.model.pre_proj_dim = [8], 4
    config.optim.update(optim)
    index = synthetic.synthetic_index(
        {"like": "ddi_concepts", "num_train": 4, "num_test": 2, "image_size": 32, "seed": 0}
    )
    return build_method(config, index), index


def test_phases_faithful_and_warmup():
    faithful = medmicn_config.get_config("ddi", None).optim
    assert faithful.dcr_warmup_epochs == 0.0
    method, _ = _method(epochs=10.0, dcr_warmup_epochs=0.0)
    (only,) = method.phases()
    assert (only.name, only.loss, only.epochs) == ("train", "default", 10.0)
    method, _ = _method(epochs=10.0, dcr_warmup_epochs=3.0)
    warm, joint = method.phases()
    assert (warm.loss, warm.epochs, joint.loss, joint.epochs) == ("concepts", 3.0, "default", 7.0)
    assert warm.optimizer == joint.optimizer and warm.stream == joint.stream != ""
    for bad in (-1.0, 10.0):
        method, _ = _method(epochs=10.0, dcr_warmup_epochs=bad)
        with pytest.raises(ConfigError, match="dcr_warmup_epochs"):
            method.phases()


def test_warmup_phase_drops_only_the_neural_loss():
    """``Method.loss`` per phase, on a stand-in network (no backbone to compile): the warm-up
    loss is the task and concept terms only, and the DCR parameters get no gradient."""
    method, _ = _method(dcr_warmup_epochs=0.5)
    rng = np.random.default_rng(0)
    w = {k: jnp.asarray(rng.normal(size=(3, 2)), jnp.float32) for k in ("fuse", "dcr")}
    params = {"fusion": {"w": w["fuse"]}, "reasoning": {"w": w["dcr"]}}
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)

    def forward(params, batch_stats, images, train, rng=None):
        fused = x @ params["fusion"]["w"]
        probs = jax.nn.sigmoid(jnp.tile(fused, (1, 7))[:, :13])
        out = {"fused_logits": fused, "fused": jax.nn.sigmoid(fused), "concept_probs": probs}
        out["side"] = out["fused"]
        out["y_neural"] = jax.nn.sigmoid(x @ params["reasoning"]["w"])
        return out, {"batch_stats": {}}

    method.forward = forward
    batch = {
        "image": np.zeros((4, 1)),
        "label": np.array([0, 1, 1, 0]),
        "concepts": (rng.random((4, 13)) < 0.3).astype(np.float32),
    }
    warm, joint = method.phases()
    state = {"batch_stats": {}}
    key = jax.random.key(1)
    (l_warm, (t_warm, _)), g_warm = jax.value_and_grad(method.loss, has_aux=True)(
        params, state, batch, key, warm
    )
    (l_joint, (t_joint, _)), g_joint = jax.value_and_grad(method.loss, has_aux=True)(
        params, state, batch, key, joint
    )
    c = method.config.loss
    expect_warm = c.w_task * t_warm["task_loss"] + c.w_concept * t_warm["concept_loss"]
    assert float(l_warm) == pytest.approx(float(expect_warm), rel=1e-5)
    expect_joint = expect_warm + c.w_neural * t_joint["neural_loss"]
    assert float(l_joint) == pytest.approx(float(expect_joint), rel=1e-5)
    assert float(t_warm["neural_loss"]) == pytest.approx(float(t_joint["neural_loss"]))
    assert float(abs(g_warm["reasoning"]["w"]).max()) == 0.0
    assert float(abs(g_joint["reasoning"]["w"]).max()) > 0.0
    np.testing.assert_allclose(g_warm["fusion"]["w"], g_joint["fusion"]["w"], rtol=1e-6)

"""Grad-CAM of the concept logits against the gradient of a hand-written re-implementation of
the head on the pooled feature (independent of the Linen interceptor the explainer uses)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.methods.medmicn.explain import grad_cam
from jaxproto.methods.medmicn.model import MedMicnModel


def _leaky(x):
    return jnp.where(x > 0, x, 0.01 * x)


def test_concept_grad_cam_matches_the_head_gradient():
    model = MedMicnModel(
        backbone="resnet_tiny", num_concepts=3, num_classes=2, backbone_feature="pooled",
        pre_proj_dim=6, emb_size=2, fusion_hidden=(8,), torch_init=True,
    )  # fmt: skip
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    out, maps = grad_cam(model, variables, x)
    p = variables["params"]

    def concept_logits(pooled):
        z = _leaky(pooled @ p["pre_proj"]["kernel"] + p["pre_proj"]["bias"])
        h = _leaky(
            jnp.einsum("h,nhk->nk", z, p["concepts"]["context_kernel"])
            + p["concepts"]["context_bias"]
        )
        return (
            h @ p["concepts"]["prob_head"]["kernel"][:, 0] + p["concepts"]["prob_head"]["bias"][0]
        )

    pooled = np.asarray(out["feature"][0])
    np.testing.assert_allclose(
        concept_logits(pooled), np.asarray(out["concept_logits"][0]), rtol=1e-4
    )
    grads = np.asarray(jax.jacrev(concept_logits)(jnp.asarray(pooled, jnp.float32)))
    fmap = np.asarray(out["cam_map"][0])
    want = np.maximum(np.einsum("hwc,mc->mhw", fmap, grads), 0.0)
    np.testing.assert_allclose(maps[2:], want, rtol=2e-3, atol=1e-5)
    assert maps.shape == (5, 1, 1)

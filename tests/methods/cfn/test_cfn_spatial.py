"""The concept page's activation maps: the SAE latent read at every position of the pooled
backbone map, against a numpy loop, and the map's tie to the embedding the SAE was trained on."""

import jax
import ml_collections
import numpy as np

from jaxproto.backbones.classifier import Classifier, init_state
from jaxproto.methods.cfn import sae as sae_lib
from jaxproto.methods.cfn import spatial


def test_latent_maps_match_a_numpy_loop_and_average_to_the_embedding():
    model = ml_collections.ConfigDict(
        {"backbone": "densenet_tiny", "tap": "final_relu", "compute_dtype": "float32"}
    )
    net = Classifier(model.backbone, model.tap, 3)
    state = init_state(net, jax.random.key(0), 96)
    images = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
    fmap = spatial.tap_fn(model, state)(images)
    _, emb = net.apply(
        {"params": state["params"], "batch_stats": state["batch_stats"]}, images, train=False
    )
    assert fmap.shape[:3] == (2, 3, 3)  # stride 32 at 96 px
    np.testing.assert_allclose(fmap.mean(axis=(1, 2)), np.asarray(emb), rtol=1e-5, atol=1e-6)

    d = fmap.shape[-1]
    sae = sae_lib.SparseAutoencoder(12).init(jax.random.key(1), np.zeros((1, d), np.float32))
    params = jax.tree.map(np.asarray, sae["params"])
    params["tied_bias"] = np.linspace(-0.1, 0.1, d).astype(np.float32)
    latents = [0, 5, 11]
    maps = spatial.latent_maps(fmap, params, latents)
    w, b_e, b_d = params["encoder"]["kernel"], params["encoder"]["bias"], params["tied_bias"]
    ref = np.zeros((2, 3, 3, len(latents)))
    for n in range(2):
        for y in range(3):
            for x in range(3):
                for k, j in enumerate(latents):
                    pre = sum(w[i, j] * (fmap[n, y, x, i] - b_d[i]) for i in range(d)) + b_e[j]
                    ref[n, y, x, k] = max(pre, 0.0)
    np.testing.assert_allclose(maps, ref, rtol=1e-4, atol=1e-5)
    # ReLU is convex and the pre-activation affine: the embedding's latent <= the map's mean.
    z, _ = sae_lib.encode(params, np.asarray(emb))
    assert np.all(z[:, latents] <= maps.mean(axis=(1, 2)) + 1e-5)


def test_only_pooled_map_taps_have_maps_and_the_grid_scales():
    assert spatial.has_maps("densenet121", "final_relu") and spatial.has_maps("resnet18", "layer4")
    assert not spatial.has_maps("vit_b_16", "cls")
    assert not spatial.has_maps("convnext_tiny", "pooled")
    cell, centre = spatial.grid("resnet18", "layer4", 0.5)
    assert (cell, centre) == (16.0, 0.25)

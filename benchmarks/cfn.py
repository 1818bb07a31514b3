"""CFN throughput, one JSON line per measurement: embedding extraction (images/s through the
opaque classifier), SAE training steps/s at F = 8192 (D = 1024, batch 4096) and OMP rebuilds/s
(K = 800 CAVs, 160 atoms).

  python benchmarks/cfn.py [--backbone densenet121|vit_b_16|...] [--image-size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.backbones.classifier import Classifier
from jaxproto.common import config as common
from jaxproto.core import parallel
from jaxproto.methods.cfn import config as cfn_config
from jaxproto.methods.cfn import omp, sae


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="densenet121")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--latents", type=int, default=8192)
    ap.add_argument("--sae-batch", type=int, default=4096)
    ap.add_argument("--concepts", type=int, default=800)
    ap.add_argument("--nonzero", type=int, default=160)
    ap.add_argument("--omp-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    mesh = parallel.make_mesh(common.mesh_block())
    dev = {"devices": mesh.size, "platform": jax.devices()[0].platform}

    tap = next(t for family, t in cfn_config.TAPS.items() if a.backbone.startswith(family))
    net = Classifier(a.backbone, tap, 7)
    x = jnp.zeros((a.batch, a.image_size, a.image_size, 3), jnp.float32)
    variables = net.init(jax.random.key(0), x[:1])
    embed = jax.jit(lambda v, im: net.apply(v, im, train=False)[1])
    t = _time(lambda: embed(variables, x), a.repeats)
    print(
        json.dumps(
            {"bench": "cfn_embed", "backbone": a.backbone, "images_per_s": a.batch / t, **dev}
        )
    )

    model = sae.SparseAutoencoder(a.latents)
    params = model.init(jax.random.key(0), jnp.zeros((1, a.dim)))["params"]
    tx = optax.adam(5e-4)
    step = sae.make_step(model, tx, 3e-5, mesh)
    xb = parallel.global_batch(np.random.rand(a.sae_batch, a.dim).astype(np.float32), mesh)
    state = [params, tx.init(params)]

    def one():
        state[0], state[1], m = step(state[0], state[1], xb)
        return m

    t = _time(one, a.repeats)
    print(
        json.dumps(
            {
                "bench": "cfn_sae",
                "latents": a.latents,
                "batch": a.sae_batch,
                "steps_per_s": 1 / t,
                **dev,
            }
        )
    )

    d = np.random.default_rng(0).normal(size=(a.dim, a.concepts)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0)
    y = jnp.asarray(np.random.rand(a.omp_batch, a.dim).astype(np.float32))
    dj = jnp.asarray(d)
    t = _time(lambda: omp.omp(dj, y, a.nonzero, True), a.repeats)
    print(
        json.dumps(
            {
                "bench": "cfn_omp",
                "concepts": a.concepts,
                "nonzero": a.nonzero,
                "rebuilds_per_s": a.omp_batch / t,
                **dev,
            }
        )
    )


if __name__ == "__main__":
    main()

"""CSR benchmark: one JSON line per measurement.

- ``similarity_maps``: backbone + projector + cosine maps S per image (the cached encoding);
- ``interaction``: re-prediction from cached S with a negative box and a rejected concept
  (no backbone), per image;
- ``train_step``: images/s of the jitted train step of each stage.

Usage: ``python benchmarks/csr.py [--config synthetic] [--batch 16] [--iters 10]``; inputs are
random tensors shaped like the config's images (no data or weights needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.methods.csr import config as csr_config
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.methods.csr import interact
from jaxproto.methods.csr.method import CsrMethod


def _index(num_concepts: int, num_classes: int) -> DatasetIndex:
    rec = Record(
        "x",
        "",
        np.eye(num_classes, dtype=np.float32)[0],
        concepts=np.zeros(num_concepts, np.float32),
    )
    return DatasetIndex(
        "bench",
        [f"class{i}" for i in range(num_classes)],
        {"train": [rec]},
        multilabel=False,
        concept_names=[f"c{k}" for k in range(num_concepts)],
    )


def _time(fn, iters: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    t = time.perf_counter()
    for _ in range(iters):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t) / iters


def _emit(**row) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="synthetic", help="variant of configs/csr_tbx11k.py")
    ap.add_argument("--concepts", type=int, default=5)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)

    cfg = csr_config.get_config("tbx11k", args.config)
    method = CsrMethod(cfg, _index(args.concepts, args.classes))
    size, b = method.image_size, args.batch
    state = method.init(jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (b, size, size, 3))
    common = {
        "backbone": cfg.model.backbone,
        "image_size": size,
        "batch": b,
        "num_prototypes": args.concepts * method.M,
        "device": jax.devices()[0].platform,
    }

    holder = {}

    def encode():
        holder["session"] = interact.CsrSession(method.model, state, images)
        return holder["session"].sims

    sec = _time(encode, args.iters)
    _emit(name="similarity_maps", ms_per_image=1e3 * sec / b, **common)
    session = holder["session"]
    a = session.importance([], [(0, 0, size // 4, size // 4)], float(cfg.model.alpha))
    rejected = np.eye(args.concepts, dtype=np.float32)[0]
    sec = _time(lambda: session.predict(a, rejected)["logits"], args.iters)
    _emit(name="interaction", ms_per_image=1e3 * sec / b, **common)

    opts = method.optimizers(steps_per_epoch=100)
    batch = {
        "image": images,
        "concepts": jnp.asarray(
            np.random.default_rng(0).random((b, args.concepts)) < 0.5, jnp.float32
        ),
        "label": jnp.zeros((b,), jnp.int32),
    }
    for phase in {p.optimizer: p for p in method.phases()}.values():  # one per stage
        tx = opts[phase.optimizer]
        opt_state = tx.init(state["params"])

        @jax.jit
        def step(params, opt_state, phase=phase, tx=tx):
            (loss, _), g = jax.value_and_grad(method.loss, has_aux=True)(
                params, state, batch, jax.random.key(0), phase
            )
            u, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, u), opt_state, loss

        sec = _time(lambda step=step, o=opt_state: step(state["params"], o)[2], args.iters)
        _emit(name="train_step", stage=phase.name, images_per_s=b / sec, **common)


if __name__ == "__main__":
    main()

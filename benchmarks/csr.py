"""CSR benchmark: one JSON line per measurement.

- ``similarity_maps``: backbone + projector + cosine maps S per image (the cached encoding);
- ``interaction``: re-prediction from cached S with a negative box and a rejected concept
  (no backbone), per image;
- ``repredict_one_image``: median latency (wall and process CPU) of one image's re-prediction
  from the cached maps;
- ``studio_repredict``: the same for the studio's whole answer for one image (model +
  per-concept map images with the colour scale);
- ``train_step``: images/s of the jitted train step of each stage.

Usage: ``python benchmarks/csr.py [--config synthetic] [--batch 16] [--iters 10]`` (the paper's
real-data model at 224 px: ``--config "" --concepts 14``); inputs are
random tensors shaped like the config's images (no data or weights needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.data.records import DatasetIndex, Record
from jaxproto.methods.csr import config as csr_config
from jaxproto.methods.csr import interact
from jaxproto.methods.csr.method import CsrMethod
from jaxproto.methods.csr.studio import StudioApp


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


def _median(fn, iters: int) -> dict[str, float]:
    """Median wall and process-CPU milliseconds of one call (after a warm-up call that
    compiles); on a shared machine the CPU time is the steadier figure (it excludes waiting for
    the cores, and counts every thread of this process)."""
    jax.block_until_ready(fn())
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"median_ms": 1e3 * float(np.median(wall)), "cpu_median_ms": 1e3 * float(np.median(cpu))}


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
    ap.add_argument("--no_train", action="store_true", help="skip the train_step rows")
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

    # One image, as in the studio: re-prediction from the cached maps (model only), and the
    # whole studio answer (model + per-concept map PNGs with colour scale), median latency.
    single = interact.CsrSession(method.model, state, images[:1])
    a1 = single.importance([], [(0, 0, size // 4, size // 4)], float(cfg.model.alpha))
    _emit(
        name="repredict_one_image",
        **_median(lambda: single.predict(a1, rejected)["logits"], args.iters),
        **{**common, "batch": 1},
    )
    app = StudioApp(method, state)
    raw = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    _, png = cv2.imencode(".png", raw)
    image_id = app.open_image("bench.png", data=png.tobytes())["image_id"]
    request = {
        "image_id": image_id,
        "negative": [[0, 0, size // 4, size // 4]],
        "rejected": [app.concepts[0]],
        "alpha": float(cfg.model.alpha),
    }
    _emit(
        name="studio_repredict",
        **_median(lambda: app.predict(request), args.iters),
        **{**common, "batch": 1},
    )

    if args.no_train:
        return
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

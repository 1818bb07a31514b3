"""Med-MICN benchmark: one JSON line per measurement.

- ``train_step``: images/s of the jitted training step (forward, the three losses, backward,
  AdamW update) on random images shaped like the config's;
- ``rule_extraction``: seconds per 1,000 images of local rule extraction plus the global count
  (host-side Python, from random DCR outputs with N concepts and K classes), at the config's
  temperature and at T = 1 (sparse rules are shorter).

Usage: ``python benchmarks/medmicn.py [--config synthetic] [--batch 32] [--iters 10]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from configs import medmicn_ddi
from jaxproto.core import trainer
from jaxproto.core.method import Phase
from jaxproto.data.ddi import CLASS_NAMES, CONCEPT_NAMES
from jaxproto.data.records import DatasetIndex
from jaxproto.methods.medmicn import dcr, rules
from jaxproto.methods.medmicn.method import MedMicnMethod


def _emit(**row) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="synthetic", help="arg of configs/medmicn_ddi.py")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rule-images", type=int, default=1000)
    args = ap.parse_args(argv)

    cfg = medmicn_ddi.get_config(args.config)
    index = DatasetIndex("bench", list(CLASS_NAMES), {}, False, None, list(CONCEPT_NAMES))
    method = MedMicnMethod(cfg, index)
    opt = method.optimizers(1)["adamw"]
    state = trainer.init_state(method, {"adamw": opt}, 0)
    size, b, n = method.image_size, args.batch, len(CONCEPT_NAMES)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, 2, b).astype(np.int32),
        "concepts": (rng.random((b, n)) < 0.3).astype(np.float32),
    }
    phase = Phase("train", "adamw")

    @jax.jit
    def step(state, batch):
        def loss_fn(params):
            return method.loss(params, state, batch, jax.random.key(0), phase)

        (loss, (_, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = opt.update(grads, state["opt"]["adamw"], state["params"])
        params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
        return {**state, "params": params, "opt": {"adamw": opt_state}, **upd}, loss

    state, loss = step(state, batch)
    jax.block_until_ready(loss)
    t = time.perf_counter()
    for _ in range(args.iters):
        state, loss = step(state, batch)
    jax.block_until_ready(loss)
    dt = (time.perf_counter() - t) / args.iters
    _emit(
        bench="train_step", backbone=cfg.model.backbone, image_size=size, batch=b,
        images_per_sec=b / dt, step_ms=1000 * dt, device=jax.devices()[0].platform,
    )  # fmt: skip

    m = args.rule_images
    c = rng.random((m, n))
    s = 1 / (1 + np.exp(-rng.normal(0, 3, (m, n, 2))))
    filt = rng.normal(0, 3, (m, n, 2))
    for temperature in sorted({float(cfg.model.dcr_temperature), 1.0}, reverse=True):
        r = np.asarray(dcr.softselect(filt, temperature))
        y = np.asarray(dcr.reason(c, s, r))
        t = time.perf_counter()
        local = rules.local_rules(c, s, r, y, CONCEPT_NAMES, CLASS_NAMES)
        table = rules.global_rules(local, CLASS_NAMES)
        dt = time.perf_counter() - t
        _emit(
            bench="rule_extraction", temperature=temperature, num_images=m, num_concepts=n,
            seconds_per_1k_images=1000 * dt / m, rules=len(local),
            distinct=sum(len(v) for v in table.values()),
        )  # fmt: skip


if __name__ == "__main__":
    main()

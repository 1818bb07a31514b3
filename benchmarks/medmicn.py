"""Med-MICN benchmark: one JSON line per measurement.

- ``train_step``: images/s of the jitted training step (forward, the three losses, backward,
  AdamW update) on random images shaped like the config's;
- ``rule_extraction``: seconds per 1,000 images of local rule extraction plus the global count
  (host-side Python, from random DCR outputs with N concepts and K classes) at T = 100, T = 1
  and the config's temperature (sparse rules are shorter).

Usage: ``python benchmarks/medmicn.py [--config synthetic] [--only train_step|rule_extraction]
[--batch 32] [--iters 10]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from jaxproto.core import trainer
from jaxproto.data.ddi import CLASS_NAMES, CONCEPT_NAMES
from jaxproto.data.records import DatasetIndex
from jaxproto.methods.medmicn import config as medmicn_config
from jaxproto.methods.medmicn import dcr, rules
from jaxproto.methods.medmicn.method import MedMicnMethod


def _emit(**row) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def train_step(cfg, iters: int, b: int) -> None:
    """images/s of the trainer's jitted step (``core.trainer.make_train_step``)."""
    index = DatasetIndex("bench", list(CLASS_NAMES), {}, False, None, list(CONCEPT_NAMES))
    method = MedMicnMethod(cfg, index)
    phase = method.phases()[0]
    opts = method.optimizers(1)
    state = jax.jit(lambda: trainer.init_state(method, opts, 0))()
    step = jax.jit(trainer.make_train_step(method, phase, opts[phase.optimizer]))
    size, n = method.image_size, len(CONCEPT_NAMES)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(b, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, 2, b).astype(np.int32),
        "concepts": (rng.random((b, n)) < 0.3).astype(np.float32),
    }
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(iters):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t) / iters
    _emit(
        bench="train_step", backbone=cfg.model.backbone, feature=cfg.model.backbone_feature,
        image_size=size, batch=b, images_per_sec=b / dt, step_ms=1000 * dt,
        first_step_s=compile_s, device=jax.devices()[0].platform,
    )  # fmt: skip


def rule_extraction(cfg, m: int) -> None:
    """Seconds per 1k images of local + global rule extraction at T = 100 (the code's: every
    concept kept), T = 1 and the config's temperature, from random DCR outputs whose polarity
    for class 1 agrees with the concepts (so every image has an active rule to write)."""
    rng = np.random.default_rng(0)
    n = len(CONCEPT_NAMES)
    c = (rng.random((m, n)) < 0.3).astype(np.float64)
    s = 1 / (1 + np.exp(-rng.normal(0, 3, (m, n, 2))))
    s[:, :, 1] = np.clip(c + rng.normal(0, 0.1, (m, n)), 0, 1)  # class 1 active: full rules
    filt = rng.normal(0, 3, (m, n, 2))
    for temperature in sorted({float(cfg.model.dcr_temperature), 1.0, 100.0}, reverse=True):
        r = np.asarray(dcr.softselect(filt, temperature))
        y = np.asarray(dcr.reason(c, s, r))
        t = time.perf_counter()
        local = rules.local_rules(c, s, r, y, CONCEPT_NAMES, CLASS_NAMES)
        table = rules.global_rules(local, CLASS_NAMES)
        dt = time.perf_counter() - t
        _emit(
            bench="rule_extraction", temperature=temperature, num_images=m, num_concepts=n,
            seconds_per_1k_images=1000 * dt / m, rules=len(local),
            literals_per_rule=float(np.mean([len(x.literals) for x in local])),
            distinct=sum(len(v) for v in table.values()),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config", default="synthetic", help="variant of configs/medmicn_ddi.py (its :ARG)"
    )
    ap.add_argument("--only", choices=("train_step", "rule_extraction"), default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rule-images", type=int, default=1000)
    args = ap.parse_args(argv)
    cfg = medmicn_config.get_config("ddi", args.config)
    if args.only in (None, "train_step"):
        train_step(cfg, args.iters, args.batch)
    if args.only in (None, "rule_extraction"):
        rule_extraction(cfg, args.rule_images)


if __name__ == "__main__":
    main()

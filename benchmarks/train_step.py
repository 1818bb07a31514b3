"""Train-step throughput of any config: one JSON line.

  python benchmarks/train_step.py --config configs/cipl_odir.py:synthetic [--steps 20] \
      [--phase 0] [--config.train.batch_size=16]

Reports images/s, step time, compile time, achieved GFLOP/s (XLA's cost analysis of the
compiled step) and that as a fraction of a float32 matmul peak measured in the same run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
from accelerator import measured_peak  # benchmarks/ is on sys.path when run as a script

from jaxproto.common import cli
from jaxproto.core import parallel
from jaxproto.methods import build_trainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.make_parser(__doc__, "benchmarks/train_step.py", config="required")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    parser.add_argument("--phase", type=int, default=0, help="index of the phase to measure")
    args = cli.parse(parser, argv)
    config = cli.load_config(args)
    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(config, workdir)
        phase = trainer.phases[args.phase]
        state = trainer.create_state()
        stream = trainer.train_stream(args.phase)
        batch = parallel.global_batch(next(stream), trainer.mesh)
        step_fn = trainer.step_fn(args.phase)
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float((cost or {}).get("flops", 0.0))
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        batches = [parallel.global_batch(next(stream), trainer.mesh) for _ in range(4)]
        t0 = time.perf_counter()
        for i in range(args.steps):
            state, metrics = compiled(state, batches[i % len(batches)])
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - t0) / args.steps
    peak = measured_peak("float32", 2048) * 1e3  # GFLOP/s
    achieved = flops / step_s / 1e9 if flops else 0.0
    result = {
        "benchmark": "train_step",
        "config": args.config,
        "method": config.method,
        "phase": phase.name,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "global_batch": trainer.global_batch,
        "image_size": int(config.model.image_size),
        "images_per_sec": trainer.global_batch / step_s,
        "step_time_ms": step_s * 1e3,
        "compile_time_s": compile_s,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": achieved / peak if peak else 0.0,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

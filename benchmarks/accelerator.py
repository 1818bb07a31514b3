"""Every method's training step at the paper's image size and batch, on whatever device JAX sees:
one JSON line per (method, phase).

    python benchmarks/accelerator.py                     # paper sizes (GPU/TPU host)
    python benchmarks/accelerator.py --small             # each config's synthetic variant (CPU)
    python benchmarks/accelerator.py --methods cipl,xmir --repeats 20 \\
        --set model.compute_dtype=bfloat16               # any config override, every method

Each method's model, optimiser, image size and batch come from its paper config
(``configs/<method>_<dataset>.py``); its data block is replaced by the synthetic variant's (same
label/concept format, generated at the paper's image size, ``2 x batch`` training images), so no
dataset is needed. Reported: images/s, step time (median of ``--repeats`` after a warm-up
step), compile time (lower + compile of the jitted step), XLA's cost-analysis FLOPs of the
compiled step (per device), and model FLOP utilisation (MFU) against (a) the device's peak from a
table by device kind (dense bfloat16 / float32 TFLOP/s from vendor data sheets; the peak of the
configured ``model.compute_dtype``) and (b) a matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxproto.common import config as config_lib  # noqa: E402
from jaxproto.core import parallel  # noqa: E402
from jaxproto.methods import build_trainer  # noqa: E402

# The paper config of each method (its dataset as in the paper's main experiment).
PAPER_CONFIGS = {
    "baseline": "configs/baseline_odir.py",
    "cfn": "configs/cfn_ham10000.py",
    "cipl": "configs/cipl_chestxray14.py",
    "csr": "configs/csr_tbx11k.py",
    "medmicn": "configs/medmicn_chestxray.py",
    "xmir": "configs/xmir_covidx.py",
}

# Dense peak TFLOP/s per chip (bfloat16, float32) by a substring of ``device.device_kind``,
# first match wins. GPUs: tensor-core bf16 without sparsity, and non-tensor-core fp32 (XLA's
# default float32 matmuls on Ampere+ use TF32 and can exceed it). TPUs: float32 matmuls run as
# bf16 passes, so only the bf16 peak is given.
PEAK_TFLOPS: tuple[tuple[str, float, float | None], ...] = (
    ("H200", 989.0, 67.0),
    ("H100", 989.0, 67.0),
    ("A100", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("V100", 125.0, 15.7),
    ("TPU v6", 918.0, None),
    ("TPU v5 lite", 197.0, None),
    ("TPU v5e", 197.0, None),
    ("TPU v5", 459.0, None),
    ("TPU v4", 275.0, None),
)


def table_peak(device_kind: str, dtype: str) -> float | None:
    """TFLOP/s of one chip for ``dtype`` from PEAK_TFLOPS, None when the kind is not listed."""
    for name, bf16, f32 in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else f32
    return None


def measured_peak(dtype: str, n: int, repeats: int = 10) -> float:
    """Best-of TFLOP/s of an (n, n) @ (n, n) matmul in ``dtype`` on the default device."""
    a = jnp.ones((n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def method_config(method: str, small: bool, overrides: list[tuple[str, str]]):
    """The paper config (or, with ``small``, the synthetic variant) with synthetic data of
    ``2 x batch`` training images at the config's image size."""
    spec = PAPER_CONFIGS[method]
    synthetic = config_lib.build_config(f"{spec}:synthetic", overrides)
    config = synthetic if small else config_lib.build_config(spec, overrides)
    data = synthetic.data
    with data.unlocked():
        data.image_size = int(config.model.image_size)
        data.num_train = 2 * int(config.train.batch_size)
        data.num_test = min(int(data.get("num_test", 8)), 8)
        if "num_val" in data:
            data.num_val = min(int(data.num_val), 8)
    with config.unlocked():
        config.data = data
        config.train.worker_count = 0
    return config


def bench_method(method: str, args, peaks: dict[str, float]) -> None:
    config = method_config(method, args.small, args.set)
    dtype = str(config.model.get("compute_dtype", "float32"))
    device = jax.devices()[0]
    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(config, workdir)
        state = trainer.create_state()
        phases = range(len(trainer.phases)) if args.phases == "all" else [0]
        for phase_index in phases:
            stream = trainer.train_stream(phase_index)
            batches = [parallel.global_batch(next(stream), trainer.mesh) for _ in range(2)]
            t0 = time.perf_counter()
            compiled = trainer.step_fn(phase_index).lower(state, batches[0]).compile()
            compile_s = time.perf_counter() - t0
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops = float((cost or {}).get("flops", 0.0))
            state, metrics = compiled(state, batches[1])  # warm-up
            jax.block_until_ready(metrics)
            times = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                state, metrics = compiled(state, batches[i % 2])
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - t0)
            step_s = statistics.median(times)
            achieved = flops / step_s / 1e12
            peak = table_peak(device.device_kind, dtype)
            row = {
                "bench": "accelerator",
                "method": method,
                "config": PAPER_CONFIGS[method] + (":synthetic" if args.small else ""),
                "phase": trainer.phases[phase_index].name,
                "backbone": str(config.model.get("backbone", "")),
                "image_size": int(config.model.image_size),
                "global_batch": trainer.global_batch,
                "compute_dtype": dtype,
                "images_per_sec": trainer.global_batch / step_s,
                "step_time_ms": step_s * 1e3,
                "step_times_ms": [t * 1e3 for t in times],
                "compile_time_s": compile_s,
                "tflop_per_step_per_device": flops / 1e12,
                "achieved_tflops_per_device": achieved,
                "table_peak_tflops": peak,
                "mfu_table": achieved / peak if peak else None,
                "measured_matmul_peak_tflops": peaks[dtype],
                "mfu_measured": achieved / peaks[dtype] if peaks[dtype] else None,
                "backend": jax.default_backend(),
                "device_kind": device.device_kind,
                "devices": jax.device_count(),
                "jax_version": jax.__version__,
            }
            print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(PAPER_CONFIGS), help="comma-separated")
    parser.add_argument("--small", action="store_true", help="synthetic variants: a CPU smoke run")
    parser.add_argument("--phases", choices=("all", "first"), default="all")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per phase")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every method (repeatable), e.g. model.compute_dtype=bfloat16",
    )
    parser.add_argument("--matmul-size", type=int, default=0, help="0: 1024 small, 8192 else")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(PAPER_CONFIGS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid: {', '.join(PAPER_CONFIGS)}")
    pairs = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    args.set = pairs
    n = args.matmul_size or (1024 if args.small else 8192)
    peaks = {d: measured_peak(d, n) for d in ("float32", "bfloat16")}
    for method in methods:
        bench_method(method, args, peaks)


if __name__ == "__main__":
    main()

"""CIPL throughput benchmark; prints one JSON line per measurement.

Measures images/s of the jitted warm-up and main training steps (loss + gradients + Adam),
the push (pass 1: streaming top-k candidates over the training images; pass 2: the chosen
images' embeddings; the atlas) in images/s with the bytes of its candidate buffers (O(P·k):
distance, image, location) against the P·k·(D + 3) floats that keeping the candidates'
embeddings would take, the peak host RSS and the peak device memory where the backend reports
it, and the distance kernel's GFLOP/s against the explicit-difference reference.

    python benchmarks/cipl.py                                   # DenseNet-121 at 512 px
    python benchmarks/cipl.py --backbone densenet_tiny --image-size 64 --batch 2   # CPU smoke
    python benchmarks/cipl.py --backbone resnet_tiny --tap layer3 --image-size 128 --batch 16 \
        --like odir --prototypes-per-class 5 --proto-dim 64          # the synthetic demo
    python benchmarks/cipl.py --backbone resnet_tiny --tap layer3 --image-size 128 --batch 16 \
        --skip-steps --push-images 1000        # push memory at the official 750 prototypes
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.backbones import backbone_stride
from jaxproto.core import parallel
from jaxproto.core.method import Phase
from jaxproto.data.synthetic import synthetic_index
from jaxproto.kernels.prototypes import l2_distance_maps, l2_distance_maps_direct
from jaxproto.methods.cipl import candidates, config, push
from jaxproto.methods.cipl.method import CiplMethod
from jaxproto.methods.cipl.model import BACKBONE_TAP


def _emit(**row) -> None:
    print(json.dumps(row), flush=True)


def _timed(fn, *args, repeats: int) -> float:
    """Seconds per call after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def _peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _method(args) -> CiplMethod:
    """The official config of ``--like`` (chestxray14: 15 classes, odir: 8) with the
    benchmark's shapes, on synthetic records of that dataset for the push."""
    arg = f"backbone={args.backbone},image_size={args.image_size}"
    cfg = config.get_config(args.like, f"{arg},prototypes_per_class={args.prototypes_per_class}")
    cfg.model.proto_dim = args.proto_dim
    cfg.model.tap = args.tap
    cfg.train.push_batch_size = args.batch
    cfg.data.update(name="synthetic", like=args.like, num_train=args.push_images, num_test=1)
    return CiplMethod(cfg, synthetic_index(cfg.data))


def bench_steps(method: CiplMethod, args, rng: np.random.Generator) -> None:
    state = jax.jit(method.init)(jax.random.key(0))
    tx = method.optimizers(steps_per_epoch=100)["joint"]
    opt = jax.jit(tx.init)(state["params"])
    b, s, c = args.batch, args.image_size, method.num_classes
    img = lambda: rng.normal(size=(b, s, s, 3)).astype(np.float32)  # noqa: E731
    lab = lambda: (rng.random((b, c)) < 0.3).astype(np.float32)  # noqa: E731
    batches = {
        "warmup": ({"image": img(), "labels": lab()}, b),
        "main": (
            {
                "image_a": img(),
                "image_b": img(),
                "view_a": img(),
                "view_b": img(),
                "labels_a": lab(),
                "labels_b": lab(),
            },
            2 * b,
        ),
    }
    for name, (batch, n_images) in batches.items():
        phase = Phase(name, "joint", loss=name)

        def step(params, opt_state, batch, phase=phase):
            grad_fn = jax.value_and_grad(method.loss, has_aux=True)
            (loss, _), grads = grad_fn(params, state, batch, jax.random.key(0), phase)
            upd, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, upd), opt_state, loss

        sec = _timed(jax.jit(step), state["params"], opt, batch, repeats=args.repeats)
        _emit(
            bench="cipl_train_step",
            phase=name,
            backbone=args.backbone,
            image_size=s,
            batch_pairs_or_images=b,
            images_per_step=n_images,
            images_per_sec=n_images / sec,
            sec_per_step=sec,
            device=jax.devices()[0].platform,
        )


def bench_push(method: CiplMethod, args) -> None:
    """Full push over ``--push-images`` synthetic training images, timed per pass."""
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    state = jax.device_put(jax.jit(method.init)(jax.random.key(0)), parallel.replicated(mesh))
    records = method.index.split("train")
    stream = push.trainer_stream(method, mesh)
    bs = int(method.config.train.push_batch_size)
    num_p = method.identity.shape[0]
    push.find_candidates(method, state, records[:bs], stream, mesh, bs)  # compile
    rss0 = _peak_rss_bytes()
    start = time.perf_counter()
    cands = push.find_candidates(method, state, records, stream, mesh, bs)
    pass1 = time.perf_counter() - start
    assignment = candidates.greedy_assign(cands)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        push.push_prototypes(method, state, records, stream, mesh, out_dir)
    full = time.perf_counter() - start
    k = int(cands.distance.shape[1])
    _emit(
        bench="cipl_push",
        backbone=args.backbone,
        image_size=args.image_size,
        batch=bs,
        images=len(records),
        prototypes=num_p,
        candidates_per_prototype=k,
        proto_dim=args.proto_dim,
        assigned=int(np.sum(assignment.image >= 0)),
        pass1_images_per_sec=len(records) / pass1,
        push_images_per_sec=len(records) / full,
        push_sec=full,
        candidate_bytes=int(sum(np.asarray(a).nbytes for a in cands)),
        candidate_bytes_with_embeddings=num_p * k * (args.proto_dim + 3) * 4,
        peak_rss_bytes=_peak_rss_bytes(),
        peak_rss_growth_bytes=_peak_rss_bytes() - rss0,
        peak_device_bytes=_peak_bytes(),
        device=jax.devices()[0].platform,
    )


def bench_kernel(method: CiplMethod, args, rng: np.random.Generator) -> None:
    grid = max(1, args.image_size // backbone_stride(args.backbone, args.tap or BACKBONE_TAP))
    n, d, p = args.batch, args.proto_dim, method.identity.shape[0]
    z = jnp.asarray(rng.random((n, grid, grid, d), np.float32))
    protos = jnp.asarray(rng.random((p, d), np.float32))
    flops = 3.0 * n * grid * grid * p * d  # sub, square, add per (patch, prototype, channel)
    for name, fn in (("expanded", l2_distance_maps), ("direct", l2_distance_maps_direct)):
        sec = _timed(jax.jit(fn), z, protos, repeats=args.repeats * 5)
        _emit(
            bench="cipl_distance_kernel",
            form=name,
            batch=n,
            grid=grid,
            prototypes=p,
            dim=d,
            gflops_per_sec=flops / sec / 1e9,
            sec=sec,
        )
    err = float(jnp.max(jnp.abs(l2_distance_maps(z, protos) - l2_distance_maps_direct(z, protos))))
    _emit(bench="cipl_distance_kernel_agreement", max_abs_diff=err)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--tap", default="", help='backbone map ("" = DenseNet pre-norm5)')
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="images (warm-up) or pairs (main)")
    parser.add_argument("--like", choices=config.DATASETS, default="chestxray14")
    parser.add_argument("--prototypes-per-class", type=int, default=50)
    parser.add_argument("--proto-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--push-images", type=int, default=200, help="push: training images")
    parser.add_argument("--skip-steps", action="store_true", help="skip the training steps")
    parser.add_argument("--skip-push", action="store_true", help="skip the push")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    method = _method(args)
    if not args.skip_steps:
        bench_steps(method, args, rng)
    if not args.skip_push:
        bench_push(method, args)
    bench_kernel(method, args, rng)


if __name__ == "__main__":
    main()

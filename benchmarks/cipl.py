"""CIPL throughput benchmark; prints one JSON line per measurement.

Measures images/s of the jitted warm-up and main training steps (loss + gradients + Adam),
push images/s (streaming top-k candidates) with the peak device memory where the backend reports
it, and the distance kernel's GFLOP/s against the explicit-difference reference.

    python benchmarks/cipl.py                                   # DenseNet-121 at 512 px
    python benchmarks/cipl.py --backbone densenet_tiny --image-size 64 --batch 2   # CPU smoke
    python benchmarks/cipl.py --backbone resnet_tiny --tap layer3 --image-size 128 --batch 16 \
        --num-classes 8 --prototypes-per-class 5 --proto-dim 64          # the synthetic demo
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxproto.core import parallel
from jaxproto.core.method import Phase
from jaxproto.data.records import DatasetIndex
from jaxproto.kernels import push as kpush
from jaxproto.kernels.prototypes import l2_distance_maps, l2_distance_maps_direct
from jaxproto.methods.cipl.defaults import cipl_config
from jaxproto.methods.cipl.method import CiplMethod


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


def _method(args) -> CiplMethod:
    arg = ml_collections.ConfigDict(
        {
            "backbone": args.backbone,
            "image_size": args.image_size,
            "prototypes_per_class": args.prototypes_per_class,
        }
    )
    cfg = cipl_config(arg, "", ml_collections.ConfigDict({"seed": 0}))
    cfg.model.proto_dim = args.proto_dim
    cfg.model.tap = args.tap
    names = [f"class{k}" for k in range(args.num_classes)]
    index = DatasetIndex("bench", names, {}, background_class=args.num_classes - 1)
    return CiplMethod(cfg, index)


def bench_steps(method: CiplMethod, args, rng: np.random.Generator) -> None:
    state = jax.jit(method.init)(jax.random.key(0))
    tx = method.optimizers(steps_per_epoch=100)["joint"]
    opt = jax.jit(tx.init)(state["params"])
    b, s, c = args.batch, args.image_size, args.num_classes
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

    # push: streaming candidate merge over random images (sharded batch)
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    bs = max(mesh.size, -(-args.batch // mesh.size) * mesh.size)
    state = jax.device_put(state, parallel.replicated(mesh))
    ident = jnp.asarray(method.identity)
    num_p = method.identity.shape[0]

    def push_step(state, batch, cands):
        out = method.apply_eval(state, batch["image"])
        allowed = (batch["labels"] @ ident.T) > 0
        return kpush.merge_candidates(
            cands, out["distances"], out["embeddings"], batch["ids"], allowed
        )

    fn = jax.jit(push_step, out_shardings=parallel.replicated(mesh))
    cands = kpush.init_candidates(num_p, kpush.exact_candidate_count(num_p), args.proto_dim)
    local = {
        "image": rng.normal(size=(bs, s, s, 3)).astype(np.float32),
        "labels": (rng.random((bs, c)) < 0.3).astype(np.float32),
        "ids": np.arange(bs, dtype=np.int32),
    }
    batch = parallel.global_batch(local, mesh)
    sec = _timed(fn, state, batch, cands, repeats=args.repeats)
    _emit(
        bench="cipl_push",
        backbone=args.backbone,
        image_size=s,
        batch=bs,
        images_per_sec=bs / sec,
        candidates_per_prototype=int(cands.distance.shape[1]),
        peak_bytes=_peak_bytes(),
    )


def bench_kernel(args, rng: np.random.Generator) -> None:
    from jaxproto.backbones import backbone_stride
    from jaxproto.methods.cipl.model import BACKBONE_TAP

    grid = max(1, args.image_size // backbone_stride(args.backbone, args.tap or BACKBONE_TAP))
    n, d, p = args.batch, args.proto_dim, args.num_classes * args.prototypes_per_class
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
    parser.add_argument("--num-classes", type=int, default=15)
    parser.add_argument("--prototypes-per-class", type=int, default=50)
    parser.add_argument("--proto-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-steps", action="store_true", help="only the distance kernel")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if not args.skip_steps:
        bench_steps(_method(args), args, rng)
    bench_kernel(args, rng)


if __name__ == "__main__":
    main()

"""X-MIR benchmarks; prints one JSON line per measurement.

  python benchmarks/xmir.py [--backbone densenet121 --size 224 --embedding-dim 256]

* ``sbsm``: SBSM maps/s for one query-neighbour pair (all masks as chunked, batched XLA work),
  and the straightforward per-mask loop (one jitted forward per masked image) in the same run;
  the loop is timed on ``--loop-masks`` masks and extrapolated to the full mask count;
* ``index``: gallery embedding images/s (batched, sharded over the local devices);
* ``query``: exact k-NN latency (k = 10) for gallery sizes ``--gallery-sizes``.

Weights are random (timings do not depend on them).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.methods.xmir import saliency, search
from jaxproto.methods.xmir.model import XmirNet


def _emit(**row) -> None:
    print(
        json.dumps({"device": jax.devices()[0].platform, "num_devices": jax.device_count(), **row}),
        flush=True,
    )


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t) / repeats


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="densenet121")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--embedding-dim", type=int, default=256)
    p.add_argument("--window", type=int, default=24)
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--chunk", type=int, default=256, help="masks per batched forward")
    p.add_argument("--loop-masks", type=int, default=16, help="masks timed in the loop")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--index-images", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--gallery-sizes", default="10000,100000")
    p.add_argument("--only", default="sbsm,index,query")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    jax.config.update("jax_default_matmul_precision", "highest")

    net = XmirNet(arch=args.backbone, embedding_dim=args.embedding_dim)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.size, args.size, 3)), jnp.float32)
    variables = net.init(jax.random.key(0), x[None], train=False)

    def embed(v, images):
        return net.apply(v, images, train=False)

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.P("data"))
    chunk = -(-args.chunk // jax.device_count()) * jax.device_count()
    common = {"backbone": args.backbone, "size": args.size}

    if "sbsm" in only:
        q = embed(variables, x[None] * 0.5)[0]
        n_masks = len(saliency.sbsm_windows(args.size, args.window, args.stride)) ** 2
        batched = _time(
            lambda: saliency.sbsm_saliency(
                embed,
                variables,
                q,
                x,
                window=args.window,
                stride=args.stride,
                chunk_size=chunk,
                batch_sharding=sharding if jax.device_count() > 1 else None,
            ),
            args.repeats,
        )
        rows = saliency.sbsm_windows(args.size, args.window, args.stride)
        one = jax.jit(embed)

        def loop():
            out = []
            for i in range(args.loop_masks):
                m = 1.0 - jnp.outer(rows[i // len(rows)], rows[i % len(rows)])
                out.append(one(variables, (m[..., None] * x)[None]))
            return out

        per_mask = _time(loop, args.repeats) / args.loop_masks
        _emit(
            bench="sbsm",
            **common,
            masks=n_masks,
            chunk=chunk,
            batched_maps_per_s=1.0 / batched,
            loop_maps_per_s=1.0 / (per_mask * n_masks),
            speedup=per_mask * n_masks / batched,
            loop_masks_timed=args.loop_masks,
        )

    if "index" in only:
        model_batch = -(-args.batch // jax.device_count()) * jax.device_count()
        jitted = jax.jit(embed)
        images = (
            np.random.default_rng(1).normal(size=(8, args.size, args.size, 3)).astype(np.float32)
        )

        def embed_batch(b):
            return np.asarray(jitted(variables, jax.device_put(b, sharding)))

        embed_batch(images[np.zeros(model_batch, int)])  # compile
        paths = list(range(args.index_images))
        t = time.perf_counter()
        search.embed_images(
            embed_batch, lambda i: images[i % 8], paths, model_batch, progress=False
        )
        dt = time.perf_counter() - t
        _emit(
            bench="index",
            **common,
            images=len(paths),
            batch=model_batch,
            images_per_s=len(paths) / dt,
        )

    if "query" in only:
        rng = np.random.default_rng(2)
        dim = args.embedding_dim or 1024
        for n in (int(s) for s in args.gallery_sizes.split(",") if s):
            g = rng.normal(size=(n, dim)).astype(np.float32)
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            qv = g[:1] + 0.01
            search.knn(qv, g, 10)  # compile
            t = time.perf_counter()
            reps = 5
            for _ in range(reps):
                search.knn(qv, g, 10)
            _emit(
                bench="query",
                gallery=n,
                dim=dim,
                k=10,
                latency_ms=1000 * (time.perf_counter() - t) / reps,
            )


if __name__ == "__main__":
    main()

"""X-MIR benchmarks; prints one JSON line per measurement.

  python benchmarks/xmir.py [--backbone densenet121 --size 224 --embedding-dim 256]

* ``sbsm``: SBSM maps/s for one query-neighbour pair (all masks as chunked, batched XLA work),
  and the straightforward per-mask loop (one jitted forward per masked image) in the same run;
  the loop is timed on ``--loop-masks`` masks and extrapolated to the full mask count;
* ``index``: gallery embedding images/s (batched, sharded over the local devices);
* ``query``: for each of ``--gallery-sizes`` synthetic 256-d unit vectors (1000 clusters, like
  class embeddings): one-query latency (k = 10; median and 90th percentile) of the exact search
  (gallery resident on the device, :class:`search.ExactIndex`), of a NumPy matmul +
  argpartition and of FAISS (``--faiss`` ivf,hnsw; recall@10 against the exact result), and the
  exact search's throughput (a batch of ``--query-batch`` queries) against NumPy's, all in the
  same run. ``python benchmarks/xmir.py --only query`` runs just these.

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


def _clustered(rng, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around ``centres`` (class clusters, as retrieval embeddings are)."""
    x = centres[rng.integers(0, len(centres), n)]
    x = x + (0.7 / np.sqrt(dim)) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _latency_ms(fn, repeats: int) -> tuple[float, float]:
    """(median, 90th percentile) wall milliseconds of ``fn()`` over ``repeats`` calls after one
    warm-up call (the median: other jobs on a shared machine inflate single calls)."""
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times)), float(np.percentile(times, 90))


def _numpy_knn(g: np.ndarray, g2: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The baseline: one BLAS matmul against the gallery (its squared norms precomputed, as
    :class:`search.ExactIndex` does), argpartition, then the k sorted."""
    d2 = g2[None, :] - 2.0 * (q @ g.T)
    part = np.argpartition(d2, k, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(d2, part, 1), 1), 1)


def _query_bench(n: int, dim: int, args: argparse.Namespace) -> None:
    """Query latency (k = 10, one query) of the exact search vs a NumPy matmul + argpartition,
    throughput (queries/s for a batch of ``--query-batch``) vs NumPy, FAISS latency + recall@10
    against the exact result."""
    k, repeats = 10, args.repeats_query
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    g = _clustered(rng, n, dim, centres)
    queries = _clustered(rng, args.query_batch, dim, centres)
    q1 = queries[:1]
    t = time.perf_counter()
    index = search.ExactIndex(g)
    jax.block_until_ready(index.norms)
    build_s = time.perf_counter() - t
    g2 = (g * g).sum(1)

    row = {"bench": "query", "gallery": n, "dim": dim, "k": k, "repeats": repeats}
    row["exact_latency_ms"], row["exact_latency_p90_ms"] = _latency_ms(
        lambda: index.search(q1, k), repeats
    )
    row["numpy_latency_ms"], row["numpy_latency_p90_ms"] = _latency_ms(
        lambda: _numpy_knn(g, g2, q1, k), repeats
    )
    batch_exact, _ = _latency_ms(lambda: index.search(queries, k), max(3, repeats // 4))
    batch_numpy, _ = _latency_ms(lambda: _numpy_knn(g, g2, queries, k), max(3, repeats // 4))
    row["query_batch"] = len(queries)
    row["exact_queries_per_s"] = 1e3 * len(queries) / batch_exact
    row["numpy_queries_per_s"] = 1e3 * len(queries) / batch_numpy
    row["exact_vs_numpy_throughput"] = batch_numpy / batch_exact
    row["exact_build_s"] = build_s
    _, exact = index.search(queries, k)
    row["exact_matches_numpy"] = float(np.mean(exact == _numpy_knn(g, g2, queries, k)))
    for kind in (s for s in args.faiss.split(",") if s):
        if kind == "hnsw" and n > args.hnsw_max_gallery:
            row["faiss_hnsw_skipped"] = f"gallery > --hnsw-max-gallery {args.hnsw_max_gallery}"
            continue
        t = time.perf_counter()
        nlist = args.nlist or min(1024, int(4 * np.sqrt(n)))
        approx = search.FaissIndex.build(
            g, kind, nlist=nlist, nprobe=args.nprobe, m=args.hnsw_m, ef_search=args.ef_search
        )
        row[f"faiss_{kind}_build_s"] = time.perf_counter() - t
        row[f"faiss_{kind}_params"] = approx.params()
        row[f"faiss_{kind}_latency_ms"], _ = _latency_ms(lambda a=approx: a.search(q1, k), repeats)
        row[f"faiss_{kind}_recall_at_10"] = search.recall_at_k(approx.search(queries, k)[1], exact)
    _emit(**row)


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
    p.add_argument("--gallery-sizes", default="10000,100000,1000000")
    p.add_argument("--faiss", default="ivf,hnsw", help="FAISS index kinds to compare ('' none)")
    p.add_argument("--nlist", type=int, default=0, help="IVF cells; 0 = min(1024, 4 sqrt(N))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node")
    p.add_argument("--ef-search", type=int, default=128, help="HNSW candidates per query")
    p.add_argument(
        "--hnsw-max-gallery",
        type=int,
        default=100_000,
        help="skip HNSW above this gallery size (its build takes many minutes on 2 cores)",
    )
    p.add_argument("--repeats-query", type=int, default=40)
    p.add_argument("--query-batch", type=int, default=64, help="queries per throughput batch")
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
        for n in (int(v) for v in args.gallery_sizes.split(",") if v):
            _query_bench(n, args.embedding_dim or 1024, args)


if __name__ == "__main__":
    main()

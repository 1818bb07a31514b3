"""Gallery indexing and exact k-nearest-neighbour search on unit embeddings (specs/xmir.md §3).

An index is a folder with ``embeddings.npy`` (float32, N x D, memory-mapped on load) and
``manifest.json`` (image paths in row order and where the model came from). Exact search is a
jitted matmul + top-k per gallery block, each block's rows split over the devices (and
processes) of a mesh and merged on device, so a gallery larger than one device -- or than
memory -- streams from disk. ``FaissIndex`` (optional ``faiss-cpu``) is the approximate
alternative for 10^6+ images.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.common.errors import DataError, UserError
from jaxproto.core.logging import Progress

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
MANIFEST_FILE = "manifest.json"


def embed_images(
    embed_batch: Callable[[np.ndarray], np.ndarray],
    load_example: Callable[[str], np.ndarray],
    paths: Sequence[str],
    batch_size: int,
    progress: bool = True,
) -> np.ndarray:
    """Embeddings (N, D) of ``paths``: ``load_example(path)`` -> HxWxC normalised image, batched
    (the last batch padded to ``batch_size`` so one program serves every batch) and embedded
    with ``embed_batch`` (which shards the batch over devices)."""
    out = None
    bar = Progress(len(paths), 0, "embedding", 1) if progress else None
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        images = np.stack([load_example(p) for p in chunk])
        pad = batch_size - len(chunk)
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        emb = np.asarray(embed_batch(images), np.float32)[: len(chunk)]
        if out is None:
            out = np.zeros((len(paths), emb.shape[1]), np.float32)
        out[start : start + len(chunk)] = emb
        if bar is not None:
            bar.update(start + len(chunk))
    if bar is not None:
        bar.close()
    if out is None:
        raise ValueError("no images to embed")
    return out


def save_index(out_dir: str, embeddings: np.ndarray, paths: Sequence[str], meta: dict) -> None:
    """Writes embeddings.npy and manifest.json (paths in row order + ``meta``)."""
    if len(paths) != len(embeddings):
        raise ValueError(f"{len(paths)} paths for {len(embeddings)} embeddings")
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, EMBEDDINGS_FILE), np.asarray(embeddings, np.float32))
    manifest = {
        "paths": [os.path.abspath(p) for p in paths],
        "num": len(paths),
        "dim": int(embeddings.shape[1]),
        **meta,
    }
    with open(os.path.join(out_dir, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=1)


def load_index(index_dir: str) -> tuple[np.ndarray, dict]:
    """(memory-mapped embeddings, manifest) of an index folder, checked for consistency."""
    emb_path = os.path.join(index_dir, EMBEDDINGS_FILE)
    man_path = os.path.join(index_dir, MANIFEST_FILE)
    for p in (emb_path, man_path):
        if not os.path.isfile(p):
            raise DataError(f"{index_dir}: not an index folder ({os.path.basename(p)} missing)")
    embeddings = np.load(emb_path, mmap_mode="r")
    with open(man_path) as f:
        manifest = json.load(f)
    if embeddings.ndim != 2 or len(manifest.get("paths", [])) != embeddings.shape[0]:
        raise DataError(
            f"{man_path}: {len(manifest.get('paths', []))} paths for embeddings of "
            f"shape {embeddings.shape}"
        )
    return embeddings, manifest


GALLERY_AXIS = "gallery"


def gallery_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) that the gallery
    rows are split over."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.sharding.Mesh(np.asarray(devices), (GALLERY_AXIS,))


@functools.partial(jax.jit, static_argnames=("k", "mesh"))
def _block_topk(queries, block, num_valid, offset, best_d2, best_idx, *, k, mesh):
    """Merges the k nearest rows of one gallery block (its rows split over ``mesh``) into the
    running (best_d2, best_idx): each device ranks its own rows, the k best of every device
    are gathered and merged (exact: the global top k is among them)."""

    def local(q, rows, first):
        n_rows = rows.shape[0]
        start = first + jax.lax.axis_index(GALLERY_AXIS) * n_rows
        q2 = jnp.sum(q * q, axis=1)[:, None]
        g2 = jnp.sum(rows * rows, axis=1)[None, :]
        d2 = jnp.maximum(q2 + g2 - 2.0 * (q @ rows.T), 0.0)
        ids = start + jnp.arange(n_rows)
        d2 = jnp.where((ids < num_valid)[None, :], d2, jnp.inf)
        neg, idx = jax.lax.top_k(-d2, min(k, n_rows))
        neg = jax.lax.all_gather(neg, GALLERY_AXIS, axis=1, tiled=True)
        idx = jax.lax.all_gather(ids[idx], GALLERY_AXIS, axis=1, tiled=True)
        return neg, idx

    spec = jax.sharding.PartitionSpec
    neg, idx = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec(), spec(GALLERY_AXIS, None), spec()),
        out_specs=(spec(), spec()),
        check_vma=False,
    )(queries, block, offset)
    all_d2 = jnp.concatenate([best_d2, -neg], axis=1)
    all_idx = jnp.concatenate([best_idx, idx.astype(jnp.int32)], axis=1)
    neg, pos = jax.lax.top_k(-all_d2, k)
    return -neg, jnp.take_along_axis(all_idx, pos, axis=1)


def _check(queries, n: int, dim: int, k: int) -> np.ndarray:
    queries = np.asarray(queries, np.float32)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (gallery size)")
    if queries.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1:]} != gallery dim {dim}")
    return queries


def _blocks(gallery: np.ndarray, chunk_size: int, mesh: jax.sharding.Mesh):
    """(start, block) over ``gallery``: blocks of ``chunk_size`` rows (rounded to the mesh
    size, the last one zero-padded), rows split over the mesh; each process reads only the
    rows of its own devices."""
    n, n_dev = gallery.shape[0], mesh.devices.size
    block = -(-min(chunk_size, n) // n_dev) * n_dev
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(GALLERY_AXIS, None))
    for start in range(0, n, block):

        def read(index, start=start):
            lo, hi = start + (index[0].start or 0), start + (index[0].stop or block)
            part = np.asarray(gallery[lo : min(hi, n)], np.float32)
            pad = (hi - lo) - part.shape[0]
            return np.pad(part, ((0, pad), (0, 0))) if pad else part

        yield start, jax.make_array_from_callback((block, gallery.shape[1]), rows, read)


def _search(queries, blocks, n: int, k: int, mesh) -> tuple[np.ndarray, np.ndarray]:
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    q = jax.device_put(queries, replicated)
    best_d2 = jax.device_put(np.full((len(queries), k), np.inf, np.float32), replicated)
    best_idx = jax.device_put(np.zeros((len(queries), k), np.int32), replicated)
    for start, block in blocks:
        best_d2, best_idx = _block_topk(
            q, block, n, np.int32(start), best_d2, best_idx, k=k, mesh=mesh
        )
    d2 = np.asarray(best_d2.addressable_data(0))
    return np.sqrt(d2), np.asarray(best_idx.addressable_data(0))


def knn(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    chunk_size: int = 65536,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest gallery rows (Euclidean) for each query: (distances, indices), (Q, k),
    nearest first.

    ``gallery`` may be a memory map larger than device (or host) memory: it is streamed in
    blocks of ``chunk_size`` rows. With a ``mesh`` (:func:`gallery_mesh`; one device by default)
    each block's rows are split over its devices -- across processes too: each process reads
    only the rows of its own devices -- and each device ranks its share. For many queries
    against one gallery that fits the devices, :class:`ExactIndex` keeps it there."""
    mesh = mesh if mesh is not None else gallery_mesh(jax.devices()[:1])
    queries = _check(queries, gallery.shape[0], gallery.shape[1], k)
    return _search(queries, _blocks(gallery, chunk_size, mesh), gallery.shape[0], k, mesh)


class ExactIndex:
    """Exact search with the gallery resident on the mesh's devices (split by rows, in blocks
    of ``chunk_size`` rows): one query costs one matmul + top-k per block, no host transfer."""

    def __init__(
        self,
        gallery: np.ndarray,
        mesh: jax.sharding.Mesh | None = None,
        chunk_size: int = 1 << 20,
    ):
        self.mesh = mesh if mesh is not None else gallery_mesh(jax.devices()[:1])
        self.n, self.dim = gallery.shape
        self.blocks = list(_blocks(gallery, chunk_size, self.mesh))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), (Q, k), nearest first, exactly as :func:`knn`."""
        queries = _check(queries, self.n, self.dim, k)
        return _search(queries, self.blocks, self.n, k, self.mesh)


class FaissIndex:
    """Approximate k-NN with FAISS (the optional ``faiss-cpu`` extra) for 10^6+ galleries:
    ``kind="ivf"`` (IndexIVFFlat, ``nlist`` cells, ``nprobe`` visited) or ``"hnsw"``
    (IndexHNSWFlat, ``m`` links, ``ef_search``). Exact L2 on the same rows gives the recall."""

    def __init__(
        self,
        gallery: np.ndarray,
        kind: str = "ivf",
        nlist: int = 0,
        nprobe: int = 16,
        m: int = 32,
        ef_search: int = 128,
        train_size: int = 100_000,
        seed: int = 0,
    ):
        try:
            import faiss
        except ImportError:
            raise UserError(
                "FAISS search needs the optional extra: pip install 'jaxproto[faiss]' (faiss-cpu)"
            ) from None
        x = np.ascontiguousarray(gallery, np.float32)
        n, d = x.shape
        if kind == "ivf":
            nlist = nlist or max(1, int(4 * np.sqrt(n)))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            sample = np.random.default_rng(seed).choice(
                n, min(n, max(train_size, 39 * nlist)), replace=False
            )
            self.index.train(x[np.sort(sample)])
            self.index.nprobe = nprobe
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, m)
            self.index.hnsw.efSearch = ef_search
        else:
            raise UserError(f"FAISS index kind must be ivf or hnsw, got {kind!r}")
        self.index.add(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), (Q, k), nearest first, like :func:`knn`."""
        d2, idx = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return np.sqrt(np.maximum(d2, 0.0)), idx


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact k nearest that the approximate search also returns."""
    hits = [len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    return float(np.sum(hits) / exact.size)

"""Gallery indexing and exact k-nearest-neighbour search on unit embeddings (specs/xmir.md §3).

An index is a folder with ``embeddings.npy`` (float32, N x D, memory-mapped on load) and
``manifest.json`` (image paths in row order and where the model came from). Search is exact:
a jitted matmul + top-k per gallery chunk, merged across chunks, so a gallery larger than
device memory streams from disk.
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

from jaxproto.common.errors import DataError
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


@functools.partial(jax.jit, static_argnames=("k",))
def _chunk_topk(queries, chunk, num_valid, offset, best_d2, best_idx, *, k):
    """Merges the k nearest rows of one gallery chunk into the running (best_d2, best_idx)."""
    q2 = jnp.sum(queries * queries, axis=1)[:, None]
    g2 = jnp.sum(chunk * chunk, axis=1)[None, :]
    d2 = jnp.maximum(q2 + g2 - 2.0 * (queries @ chunk.T), 0.0)
    d2 = jnp.where(jnp.arange(chunk.shape[0])[None, :] < num_valid, d2, jnp.inf)
    kk = min(k, chunk.shape[0])
    neg, idx = jax.lax.top_k(-d2, kk)
    all_d2 = jnp.concatenate([best_d2, -neg], axis=1)
    all_idx = jnp.concatenate([best_idx, idx + offset], axis=1)
    neg, pos = jax.lax.top_k(-all_d2, k)
    return -neg, jnp.take_along_axis(all_idx, pos, axis=1)


def knn(
    queries: np.ndarray, gallery: np.ndarray, k: int, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest gallery rows (Euclidean) for each query: (distances, indices), (Q, k),
    nearest first. ``gallery`` may be a memory map; it is read ``chunk_size`` rows at a time."""
    queries = jnp.asarray(np.asarray(queries, np.float32))
    n = gallery.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (gallery size)")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != gallery dim {gallery.shape[1]}")
    chunk_size = min(chunk_size, n)
    best_d2 = jnp.full((queries.shape[0], k), jnp.inf, jnp.float32)
    best_idx = jnp.zeros((queries.shape[0], k), jnp.int32)
    for start in range(0, n, chunk_size):
        chunk = np.asarray(gallery[start : start + chunk_size], np.float32)
        valid = chunk.shape[0]
        if valid < chunk_size:
            chunk = np.concatenate(
                [chunk, np.zeros((chunk_size - valid, chunk.shape[1]), np.float32)]
            )
        best_d2, best_idx = _chunk_topk(
            queries, jnp.asarray(chunk), valid, start, best_d2, best_idx, k=k
        )
    return np.sqrt(np.asarray(best_d2)), np.asarray(best_idx)

"""Gallery indexing and exact k-nearest-neighbour search on unit embeddings (specs/xmir.md §3).

An index is a folder with ``embeddings.npy`` (float32, N x D, memory-mapped on load),
``manifest.json`` (image paths in row order and where the model came from) and optionally
``faiss.index`` (an approximate FAISS index of the same rows; its parameters in the manifest).
Exact search is a jitted matmul + top-k per gallery block, each block's rows split over the
devices (and processes) of a mesh and merged on device: :func:`knn` streams a gallery larger
than one device -- or than memory -- from disk, :class:`ExactIndex` keeps one that fits on the
devices for many queries. ``FaissIndex`` (optional ``faiss-cpu``) is the approximate
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
FAISS_FILE = "faiss.index"  # optional: the approximate index of the same rows


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


def save_index(
    out_dir: str,
    embeddings: np.ndarray,
    paths: Sequence[str],
    meta: dict,
    approximate: FaissIndex | None = None,
) -> None:
    """Writes embeddings.npy and manifest.json (paths in row order + ``meta``), and the
    ``approximate`` FAISS index of the same rows as faiss.index (its parameters in the
    manifest); a faiss.index left from an earlier build is removed."""
    if len(paths) != len(embeddings):
        raise ValueError(f"{len(paths)} paths for {len(embeddings)} embeddings")
    if approximate is not None and approximate.ntotal != len(embeddings):
        raise ValueError(f"FAISS index of {approximate.ntotal} rows for {len(embeddings)}")
    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, EMBEDDINGS_FILE), np.asarray(embeddings, np.float32))
    manifest = {
        "paths": [os.path.abspath(p) for p in paths],
        "num": len(paths),
        "dim": int(embeddings.shape[1]),
        **meta,
    }
    faiss_path = os.path.join(out_dir, FAISS_FILE)
    if approximate is not None:
        approximate.save(faiss_path)
        manifest["faiss"] = approximate.params()
    elif os.path.exists(faiss_path):
        os.remove(faiss_path)
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
    if "faiss" in manifest and not os.path.isfile(os.path.join(index_dir, FAISS_FILE)):
        raise DataError(f"{man_path} names a FAISS index but {FAISS_FILE} is missing")
    return embeddings, manifest


def load_faiss(index_dir: str, num_rows: int) -> FaissIndex:
    """The FAISS index stored beside an index folder's ``num_rows`` embeddings."""
    path = os.path.join(index_dir, FAISS_FILE)
    approximate = FaissIndex.load(path)
    if approximate.ntotal != num_rows:
        raise DataError(f"{path} holds {approximate.ntotal} rows, the index {num_rows}")
    return approximate


GALLERY_AXIS = "gallery"


def gallery_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process) that the gallery
    rows are split over."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.sharding.Mesh(np.asarray(devices), (GALLERY_AXIS,))


def _candidates(queries, rows, norms, offset, num_valid, k: int, mesh):
    """Each device's k best rows of one gallery block (rows and their squared norms split over
    ``mesh``), gathered: (scores, ids), (Q, k x devices). The score |g|^2 - 2 q.g is the squared
    distance less |q|^2, which does not change the order (added back in :func:`_finish`)."""

    def local(q, rows, sq, first):
        n_rows = rows.shape[0]
        ids = first + jax.lax.axis_index(GALLERY_AXIS) * n_rows + jnp.arange(n_rows)
        # q . rows^T contracting both minor dims: no transposed copy of the gallery per search
        dots = jax.lax.dot_general(q, rows, (((1,), (1,)), ((), ())))
        score = jnp.where((ids < num_valid)[None, :], sq[None, :] - 2.0 * dots, jnp.inf)
        neg, idx = jax.lax.top_k(-score, min(k, n_rows))
        neg = jax.lax.all_gather(neg, GALLERY_AXIS, axis=1, tiled=True)
        return neg, jax.lax.all_gather(ids[idx], GALLERY_AXIS, axis=1, tiled=True)

    spec = jax.sharding.PartitionSpec
    neg, ids = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec(), spec(GALLERY_AXIS, None), spec(GALLERY_AXIS), spec()),
        out_specs=(spec(), spec()),
        check_vma=False,
    )(queries, rows, norms, offset)
    return -neg, ids.astype(jnp.int32)


def _merge(best, candidates, k: int):
    """The k best of the running (scores, ids) and a block's candidates (exact: the global k
    best are among them)."""
    scores = jnp.concatenate([best[0], candidates[0]], axis=1)
    ids = jnp.concatenate([best[1], candidates[1]], axis=1)
    neg, pos = jax.lax.top_k(-scores, k)
    return -neg, jnp.take_along_axis(ids, pos, axis=1)


def _start(queries, k: int):
    return jnp.full((queries.shape[0], k), jnp.inf), jnp.zeros((queries.shape[0], k), jnp.int32)


def _finish(queries, best):
    """(distances, ids): the squared distance is the score plus |q|^2, clamped at 0."""
    d2 = best[0] + jnp.sum(queries * queries, axis=1, keepdims=True)
    return jnp.sqrt(jnp.maximum(d2, 0.0)), best[1]


@jax.jit
def _row_norms(block):
    return jnp.sum(block * block, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "mesh"))
def _stream_step(queries, block, offset, num_valid, best, *, k, mesh):
    """Merges one streamed gallery block into the running best (its norms computed here)."""
    cand = _candidates(queries, block, _row_norms(block), offset, num_valid, k, mesh)
    return _merge(best, cand, k)


@functools.partial(jax.jit, static_argnames=("k", "mesh"))
def _resident_search(queries, blocks, norms, num_valid, *, k, mesh):
    """Exact search over device-resident blocks (norms precomputed) in one program: per block
    one matmul + top-k on each device, merged on device."""
    best = _start(queries, k)
    offset = 0
    for rows, sq in zip(blocks, norms, strict=True):
        cand = _candidates(queries, rows, sq, jnp.int32(offset), num_valid, k, mesh)
        best = _merge(best, cand, k)
        offset += rows.shape[0]
    return _finish(queries, best)


_finish_stream = jax.jit(_finish)


def _check(queries, n: int, dim: int, k: int) -> np.ndarray:
    queries = np.asarray(queries, np.float32)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (gallery size)")
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"query shape {queries.shape} is not (Q, {dim}) (gallery dim {dim})")
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


def _host(x: jax.Array) -> np.ndarray:
    return np.asarray(x.addressable_data(0))


def _replicated(x: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


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
    n = gallery.shape[0]
    q = _replicated(_check(queries, n, gallery.shape[1], k), mesh)
    best = _replicated(np.full((q.shape[0], k), np.inf, np.float32), mesh)
    best = (best, _replicated(np.zeros((q.shape[0], k), np.int32), mesh))
    for start, block in _blocks(gallery, chunk_size, mesh):
        best = _stream_step(q, block, np.int32(start), np.int32(n), best, k=k, mesh=mesh)
    d, idx = _finish_stream(q, best)
    return _host(d), _host(idx)


class ExactIndex:
    """Exact search with the gallery resident on the mesh's devices (split by rows, in blocks
    of ``chunk_size`` rows, their squared norms computed once): a search is one program -- per
    block one matmul + top-k on each device, merged on device -- and no gallery transfer."""

    def __init__(
        self,
        gallery: np.ndarray,
        mesh: jax.sharding.Mesh | None = None,
        chunk_size: int = 1 << 20,
    ):
        self.mesh = mesh if mesh is not None else gallery_mesh(jax.devices()[:1])
        self.n, self.dim = gallery.shape
        self.blocks = tuple(block for _, block in _blocks(gallery, chunk_size, self.mesh))
        self.norms = tuple(_row_norms(block) for block in self.blocks)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), (Q, k), nearest first, exactly as :func:`knn`."""
        q = _replicated(_check(queries, self.n, self.dim, k), self.mesh)
        d, idx = _resident_search(q, self.blocks, self.norms, np.int32(self.n), k=k, mesh=self.mesh)
        return _host(d), _host(idx)


FAISS_KINDS = ("ivf", "hnsw")


def require_faiss():
    """The ``faiss`` module, or one clear line on how to install it."""
    try:
        import faiss
    except ImportError:
        raise UserError(
            'FAISS search needs the optional faiss-cpu package: pip install -e ".[faiss]"'
        ) from None
    return faiss


class FaissIndex:
    """Approximate k-NN with FAISS (the optional ``faiss-cpu`` extra) for 10^6+ galleries:
    ``ivf`` (IndexIVFFlat: ``nlist`` k-means cells, ``nprobe`` of them visited per query) or
    ``hnsw`` (IndexHNSWFlat: ``m`` links per node, ``ef_search`` candidates per query). Build
    with :meth:`build`, store with :meth:`save`/:meth:`load`; :func:`recall_at_k` against
    :class:`ExactIndex` measures what the approximation loses."""

    def __init__(self, index):
        faiss = require_faiss()
        self._owner = index  # the wrapper that owns the C++ index (a downcast one does not)
        self.index = faiss.downcast_index(index)
        if isinstance(self.index, faiss.IndexIVFFlat):
            self.kind = "ivf"
        elif isinstance(self.index, faiss.IndexHNSWFlat):
            self.kind = "hnsw"
        else:
            raise UserError(f"not an IVF-flat or HNSW-flat FAISS index: {type(index).__name__}")

    @classmethod
    def build(
        cls,
        gallery: np.ndarray,
        kind: str = "ivf",
        nlist: int = 0,
        nprobe: int = 16,
        m: int = 32,
        ef_search: int = 128,
        train_size: int = 100_000,
        seed: int = 0,
    ) -> FaissIndex:
        """The index of ``gallery`` (N, D) rows; ``nlist`` 0 = 4 sqrt(N); IVF's k-means trains
        on max(``train_size``, 39 nlist) sampled rows (all when fewer)."""
        faiss = require_faiss()
        x = np.ascontiguousarray(gallery, np.float32)
        n, d = x.shape
        if kind == "ivf":
            nlist = nlist or max(1, min(n, int(4 * np.sqrt(n))))
            if not 1 <= nlist <= n:
                raise UserError(f"FAISS IVF: nlist={nlist} must be in [1, {n}] (gallery size)")
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
            sample = np.random.default_rng(seed).choice(
                n, min(n, max(train_size, 39 * nlist)), replace=False
            )
            index.train(x[np.sort(sample)])
        elif kind == "hnsw":
            if m < 2:
                raise UserError(f"FAISS HNSW: M={m} must be at least 2")
            index = faiss.IndexHNSWFlat(d, m)
        else:
            raise UserError(
                f"FAISS index kind must be one of {', '.join(FAISS_KINDS)}, got {kind!r}"
            )
        index.add(x)
        out = cls(index)
        out.set_search_params(nprobe=nprobe, ef_search=ef_search)
        return out

    def set_search_params(self, nprobe: int = 0, ef_search: int = 0) -> None:
        """IVF's ``nprobe`` / HNSW's ``ef_search`` (0 = leave as they are)."""
        if nprobe < 0 or ef_search < 0:
            raise UserError(f"FAISS nprobe={nprobe} and ef_search={ef_search} must be >= 1")
        if self.kind == "ivf" and nprobe:
            self.index.nprobe = nprobe
        if self.kind == "hnsw" and ef_search:
            self.index.hnsw.efSearch = ef_search

    def params(self) -> dict:
        """What the index was built and searches with (for the manifest and the logs)."""
        if self.kind == "ivf":
            return {"kind": "ivf", "nlist": int(self.index.nlist), "nprobe": int(self.index.nprobe)}
        return {
            "kind": "hnsw",
            "M": int(self.index.hnsw.nb_neighbors(1)),
            "ef_search": int(self.index.hnsw.efSearch),
        }

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def save(self, path: str) -> None:
        require_faiss().write_index(self.index, path)

    @classmethod
    def load(cls, path: str) -> FaissIndex:
        faiss = require_faiss()
        try:
            return cls(faiss.read_index(path))
        except RuntimeError as e:
            raise DataError(
                f"{path}: not a readable FAISS index ({str(e).splitlines()[0]})"
            ) from None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), (Q, k), nearest first, like :func:`knn`."""
        queries = _check(queries, self.ntotal, self.index.d, k)
        d2, idx = self.index.search(np.ascontiguousarray(queries), k)
        return np.sqrt(np.maximum(d2, 0.0)), idx


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact k nearest that the approximate search also returns."""
    hits = [len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    return float(np.sum(hits) / exact.size)

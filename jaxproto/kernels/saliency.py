"""Similarity saliency for retrieval: SBSM occlusion, SimAtt, SimCAM, self-similarity.

Pure functions (specs/xmir.md §4). Images are single HxWxC arrays in *normalised* space
(occlusion value 0 = ImageNet mean colour). Models come in as functions of explicit parameters so
everything jits without baking weights into the program:

* ``embed_fn(params, images[B,H,W,C]) -> unit embeddings [B, D]`` (SBSM, self-similarity);
* ``feature_fn(params, images) -> A [B,h,w,C]`` (the final ReLU map) and
  ``head_fn(params, A) -> unnormalised e [B, D]`` (GAP [+ fc]) for SimAtt;
* SimCAM takes the two feature maps (and the optional fc weights) directly.

Pass the same (module-level or bound-method) function objects on every call so the jit cache
hits.

SBSM never materialises the N = 2401 masks: a mask is one minus the outer product of a row
window and a column window, so the weighted mask sum of §4.2 is ``rows^T @ W @ cols``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.methods.xmir.losses import l2_normalize, pairwise_distances

EmbedFn = Callable[[object, jax.Array], jax.Array]


def sbsm_windows(size: int, window: int = 24, stride: int = 5) -> np.ndarray:
    """(n, size) float32: row ``i`` is 1 where window ``i`` covers the pixel (clipped at the
    border). Offsets are ``arange(stride - window, size, stride)``."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"SBSM window and stride must be positive, got {window}, {stride}")
    offsets = np.arange(stride - window, size, stride)
    grid = np.arange(size)
    covered = (grid[None, :] >= offsets[:, None]) & (grid[None, :] < offsets[:, None] + window)
    return covered.astype(np.float32)


def sbsm_masks(height: int, width: int, window: int = 24, stride: int = 5) -> np.ndarray:
    """All (N, H, W) SBSM masks (1 = kept, 0 = occluded), row-major over (row offset, col offset).

    Materialised only for references and benchmarks; the kernels work on the factored form."""
    rows, cols = sbsm_windows(height, window, stride), sbsm_windows(width, window, stride)
    occluded = rows[:, None, :, None] * cols[None, :, None, :]
    return (1.0 - occluded).reshape(-1, height, width)


def _masked_embeddings(
    embed_fn: EmbedFn,
    params,
    image: jax.Array,
    rows: jax.Array,
    cols: jax.Array,
    chunk_size: int,
    batch_sharding: jax.sharding.Sharding | None,
) -> jax.Array:
    """Unit embeddings of every occluded copy of ``image``, (N, D), in chunks of ``chunk_size``."""
    n_rows, n_cols = rows.shape[0], cols.shape[0]
    n = n_rows * n_cols
    n_chunks = -(-n // chunk_size)
    idx = jnp.arange(n_chunks * chunk_size).reshape(n_chunks, chunk_size)

    def one_chunk(chunk_idx):
        # Indices past N (padding of the last chunk) are clamped; their embeddings are dropped.
        r = rows[jnp.minimum(chunk_idx // n_cols, n_rows - 1)]
        c = cols[chunk_idx % n_cols]
        masks = 1.0 - r[:, :, None] * c[:, None, :]
        batch = masks[..., None] * image[None]
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return embed_fn(params, batch)

    emb = jax.lax.map(one_chunk, idx)
    return emb.reshape(n_chunks * chunk_size, -1)[:n]


def _weighted_mask_sum(weights: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """sum_n (1 - M_n(p)) w_n / c(p) with c(p) = sum_n (1 - M_n(p)) (spec §4.2)."""
    w = weights.reshape(rows.shape[0], cols.shape[0])
    total = rows.T @ w @ cols
    coverage = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return total / coverage


@functools.partial(
    jax.jit,
    static_argnames=("embed_fn", "window", "stride", "chunk_size", "batch_sharding"),
)
def sbsm_saliency(
    embed_fn: EmbedFn,
    params,
    query_embedding: jax.Array,
    image: jax.Array,
    *,
    window: int = 24,
    stride: int = 5,
    chunk_size: int = 250,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """SBSM map (H, W) of a retrieved ``image`` for a query's unit embedding ``(D,)`` (§4.2).

    S(p) = 1/c(p) sum_n (1 - M_n(p)) max(0, d(q, f(M_n x)) - d(q, f(x))), d = torch.cdist
    (matmul form for the masked batch, direct form for the 1x1 baseline). ``batch_sharding``
    (e.g. NamedSharding(mesh, P("data"))) spreads each chunk of masked images over devices;
    ``chunk_size`` must then be divisible by the number of devices on that axis.
    """
    h, w = image.shape[:2]
    rows = jnp.asarray(sbsm_windows(h, window, stride))
    cols = jnp.asarray(sbsm_windows(w, window, stride))
    q = query_embedding[None, :]
    base = pairwise_distances(q, embed_fn(params, image[None]), mode="direct")[0, 0]
    emb = _masked_embeddings(embed_fn, params, image, rows, cols, chunk_size, batch_sharding)
    d = pairwise_distances(q, emb)[0]
    return _weighted_mask_sum(jax.nn.relu(d - base), rows, cols)


@functools.partial(
    jax.jit,
    static_argnames=("embed_fn", "window", "stride", "chunk_size", "batch_sharding"),
)
def sbsm_self_saliency(
    embed_fn: EmbedFn,
    params,
    image: jax.Array,
    *,
    window: int = 24,
    stride: int = 5,
    chunk_size: int = 250,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """Self-similarity map: 1/c(p) sum_n (1 - M_n(p)) ||f(x) - f(M_n x)|| (no clamp, §4.2)."""
    h, w = image.shape[:2]
    rows = jnp.asarray(sbsm_windows(h, window, stride))
    cols = jnp.asarray(sbsm_windows(w, window, stride))
    e = embed_fn(params, image[None])
    emb = _masked_embeddings(embed_fn, params, image, rows, cols, chunk_size, batch_sharding)
    d = jnp.linalg.norm(emb - e, axis=-1)
    return _weighted_mask_sum(d, rows, cols)


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear upsampling of (..., h, w) maps, align_corners=False (half-pixel centres)."""
    return jax.image.resize(maps, maps.shape[:-2] + tuple(size), method="linear", antialias=False)


@functools.partial(jax.jit, static_argnames=("feature_fn", "head_fn"))
def simatt_maps(
    feature_fn: Callable, head_fn: Callable, params, query: jax.Array, retrieved: jax.Array
) -> jax.Array:
    """SimAtt (§4.3): (2, H, W) maps of the query and the retrieved image.

    w = 1 - |e_q/|e_q| - e_r/|e_r|| (detached); s_t = sum_d |e_t,d| w_d; alpha_t,c = spatial mean
    of ds_t/dA_t,c; M_t = ReLU(sum_c alpha_t,c A_t,c), upsampled to the image size. The gradient
    of |e| at 0 is taken as 0 (torch's sign(0)).
    """
    images = jnp.stack([query, retrieved])
    feats = feature_fn(params, images)
    e = head_fn(params, feats)
    unit = l2_normalize(e)
    weight = jax.lax.stop_gradient(1.0 - jnp.abs(unit[0] - unit[1]))

    def score(a):
        et = head_fn(params, a)
        return jnp.sum(et * jax.lax.stop_gradient(jnp.sign(et)) * weight)

    grads = jax.grad(score)(feats)
    alpha = grads.mean(axis=(1, 2))
    maps = jax.nn.relu(jnp.einsum("thwc,tc->thw", feats, alpha))
    return upsample(maps, images.shape[1:3])


@functools.partial(jax.jit, static_argnames=("size",))
def simcam_maps(
    query_features: jax.Array,
    retrieved_features: jax.Array,
    size: tuple[int, int],
    fc_kernel: jax.Array | None = None,
    fc_bias: jax.Array | None = None,
) -> jax.Array:
    """SimCAM (§4.4): (2, H, W) maps from the (h, w, C) final ReLU maps of query and retrieved.

    Per location x(i,j) = A(i,j) or, with fc, W A(i,j) + b/(h w); D[i,j,k,l] = <x_q(i,j),
    x_r(k,l)> / max D, ReLU; query map = sum_kl D, retrieved map = sum_ij D; upsampled.
    """
    xq, xr = query_features, retrieved_features
    if fc_kernel is not None:
        hw = xq.shape[0] * xq.shape[1]
        bias = 0.0 if fc_bias is None else fc_bias / hw
        xq = xq @ fc_kernel + bias
        xr = xr @ fc_kernel + bias
    d = jnp.einsum("ijc,klc->ijkl", xq, xr)
    d = jax.nn.relu(d / jnp.max(d))
    maps = jnp.stack([d.sum(axis=(2, 3)), d.sum(axis=(0, 1))])
    return upsample(maps, size)

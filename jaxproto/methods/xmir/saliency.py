"""Similarity saliency for retrieval (the original ``explanations.py``): SBSM occlusion (pixel and
feature space, masked/blurred query), SimAtt (pair and triplet), SimCAM, SimScoreCAM and the
self-similarity maps.

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
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from jaxproto.kernels.prototypes import l2_normalize
from jaxproto.methods.xmir.insdel import blur
from jaxproto.methods.xmir.losses import pairwise_distances

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


def _chunked_embeddings(
    embed_fn: EmbedFn,
    params,
    make_batch: Callable[[jax.Array], jax.Array],
    n: int,
    chunk_size: int,
    batch_sharding: jax.sharding.Sharding | None,
) -> jax.Array:
    """Unit embeddings (n, D) of the images ``make_batch(indices)`` builds, ``chunk_size`` at a
    time in one ``lax.map`` (indices past ``n`` pad the last chunk and are dropped)."""
    n_chunks = -(-n // chunk_size)
    idx = jnp.arange(n_chunks * chunk_size).reshape(n_chunks, chunk_size)

    def one_chunk(chunk_idx):
        batch = make_batch(jnp.minimum(chunk_idx, n - 1))
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        return embed_fn(params, batch)

    emb = jax.lax.map(one_chunk, idx)
    return emb.reshape(n_chunks * chunk_size, -1)[:n]


def _occluded_embeddings(embed_fn, params, image, rows, cols, chunk_size, batch_sharding):
    """Unit embeddings of every occluded copy of ``image`` (N = rows x cols masks, row-major)."""
    n_cols = cols.shape[0]

    def make_batch(i):
        masks = 1.0 - rows[i // n_cols][:, :, None] * cols[i % n_cols][:, None, :]
        return masks[..., None] * image[None]

    n = rows.shape[0] * n_cols
    return _chunked_embeddings(embed_fn, params, make_batch, n, chunk_size, batch_sharding)


def _weighted_mask_sum(weights: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """sum_n (1 - M_n(p)) w_n / c(p) with c(p) = sum_n (1 - M_n(p)) (spec §4.2)."""
    w = weights.reshape(rows.shape[0], cols.shape[0])
    total = rows.T @ w @ cols
    coverage = rows.sum(0)[:, None] * cols.sum(0)[None, :]
    return total / coverage


def _windows(h: int, w: int, window: int, stride: int) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(sbsm_windows(h, window, stride)), jnp.asarray(
        sbsm_windows(w, window, stride)
    )


_SBSM_STATIC = ("embed_fn", "window", "stride", "chunk_size", "batch_sharding")


@functools.partial(jax.jit, static_argnames=_SBSM_STATIC)
def sbsm_saliency(
    embed_fn: EmbedFn,
    params,
    query_embedding: jax.Array | None,
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
    ``chunk_size`` must then be divisible by the number of devices on that axis. SBSMMask (a
    masked or blurred query) is this map for the embedding of the transformed query
    (:func:`mask_query`). ``query_embedding`` None: the self-similarity map
    (:func:`sbsm_self_saliency`).
    """
    rows, cols = _windows(*image.shape[:2], window, stride)
    e = embed_fn(params, image[None])
    emb = _occluded_embeddings(embed_fn, params, image, rows, cols, chunk_size, batch_sharding)
    if query_embedding is None:
        weights = jnp.linalg.norm(emb - e, axis=-1)
    else:
        q = query_embedding[None, :]
        base = pairwise_distances(q, e, mode="direct")[0, 0]
        weights = jax.nn.relu(pairwise_distances(q, emb)[0] - base)
    return _weighted_mask_sum(weights, rows, cols)


def sbsm_self_saliency(embed_fn: EmbedFn, params, image: jax.Array, **occlusion) -> jax.Array:
    """Self-similarity map (the original's ``--self-saliency``): 1/c(p) sum_n (1 - M_n(p))
    ||f(x) - f(M_n x)||, no clamp (§4.2). ``occlusion``: :func:`sbsm_saliency`'s keywords."""
    return sbsm_saliency(embed_fn, params, None, image, **occlusion)


def sbsm_blur_kernel(sigma: float) -> np.ndarray:
    """SBSMMask's blur kernel: a (2 ceil(4 sigma) + 1)^2 product of sampled Gaussians, sum 1."""
    half = math.ceil(4 * sigma)
    g = np.exp(-0.5 * ((np.arange(2 * half + 1) - half) / sigma) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("mode", "blur_sigma"))
def mask_query(
    query: jax.Array, mask: jax.Array, mode: str = "mask", blur_sigma: float = 8.0
) -> jax.Array:
    """SBSMMask's query transform (normalised HxWxC image, (H, W) mask of 1 = keep):
    ``mask``: M x (outside the region = mean colour); ``blur``: M x + (1 - M) blur(x), the
    Gaussian blur taken in [0, 1] pixel space with zero padding, as the original."""
    m = mask[..., None].astype(query.dtype)
    if mode == "mask":
        return m * query
    if mode != "blur":
        raise ValueError(f"SBSMMask mode must be 'mask' or 'blur', got {mode!r}")
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    blurred = (blur(query * std + mean, jnp.asarray(sbsm_blur_kernel(blur_sigma))) - mean) / std
    return m * query + (1.0 - m) * blurred


@functools.partial(jax.jit, static_argnames=("head_fn", "size", "window", "stride"))
def sbsm_feature_saliency(
    head_fn: Callable,
    params,
    query_embedding: jax.Array,
    features: jax.Array,
    size: tuple[int, int],
    *,
    window: int = 1,
    stride: int = 1,
) -> jax.Array:
    """Feature-space SBSM (the original's SBSMFeature): the occlusion windows slide over the
    retrieved image's (h, w, C) explanation layer instead of its pixels; an occluded map is
    pooled over its kept cells only (the original's sum / (hw - 1) for 1-cell windows), passed
    through the rest of the head and normalised. Returns the (h, w) map upsampled to ``size``.
    """
    h, w = features.shape[:2]
    rows, cols = _windows(h, w, window, stride)
    keep = 1.0 - rows[:, None, :, None] * cols[None, :, None, :]  # (nr, nc, h, w)
    keep = keep.reshape(-1, h, w)
    # head_fn pools with a mean over all h*w cells: rescale so it averages the kept cells.
    scale = (h * w) / jnp.maximum(keep.sum(axis=(1, 2)), 1.0)
    masked = features[None] * keep[..., None] * scale[:, None, None, None]
    emb = l2_normalize(head_fn(params, masked))
    base_emb = l2_normalize(head_fn(params, features[None]))
    q = query_embedding[None, :]
    base = pairwise_distances(q, base_emb, mode="direct")[0, 0]
    d = pairwise_distances(q, emb)[0]
    return upsample(_weighted_mask_sum(jax.nn.relu(d - base), rows, cols), size)


@functools.partial(
    jax.jit,
    static_argnames=("embed_fn", "feature_fn", "masking", "chunk_size", "batch_sharding"),
)
def simscorecam_saliency(
    embed_fn: EmbedFn,
    feature_fn: Callable,
    params,
    query_embedding: jax.Array,
    image: jax.Array,
    *,
    masking: str = "multiply",
    chunk_size: int = 64,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """SimScoreCAM (the original's ``SimScoreCAM``, after Score-CAM) map (H, W) of a retrieved
    ``image`` for a query's unit embedding.

    Each channel c of the retrieved explanation layer, upsampled to the image (A_c), gives a
    mask N_c = 1 - (A_c - min A_c) / (max A_c - min A_c) (inverted, as the original; constant
    channels are left out). s_c = max(0, d(q, f(N_c . x)) - d(q, f(x))), min-max normalised
    over the channels; the map is mean_c s_c A_c. ``masking``: "multiply" (N_c x elementwise,
    Score-CAM's definition) or "matmul_compat" (the original's ``torch.matmul`` of the H x W
    mask with each H x W channel, a matrix product).
    """
    if masking not in ("multiply", "matmul_compat"):
        raise ValueError(f"SimScoreCAM masking must be multiply or matmul_compat, got {masking!r}")
    size = image.shape[:2]
    act = upsample(jnp.moveaxis(feature_fn(params, image[None])[0], -1, 0), size)  # (C, H, W)
    lo, hi = act.min(axis=(1, 2)), act.max(axis=(1, 2))
    valid = hi > lo
    span = jnp.where(valid, hi - lo, 1.0)
    norm = jnp.where(
        valid[:, None, None], 1.0 - (act - lo[:, None, None]) / span[:, None, None], 0.0
    )

    def make_batch(i):
        n = norm[i]
        if masking == "multiply":
            return n[..., None] * image[None]
        return jnp.einsum("bhw,wvc->bhvc", n, image, precision=jax.lax.Precision.HIGHEST)

    q = query_embedding[None, :]
    base = pairwise_distances(q, embed_fn(params, image[None]), mode="direct")[0, 0]
    emb = _chunked_embeddings(
        embed_fn, params, make_batch, act.shape[0], chunk_size, batch_sharding
    )
    s = jax.nn.relu(pairwise_distances(q, emb)[0] - base)
    s_lo = jnp.min(jnp.where(valid, s, jnp.inf))
    s_hi = jnp.max(jnp.where(valid, s, -jnp.inf))
    s = jnp.where(s_hi > s_lo, (s - s_lo) / jnp.where(s_hi > s_lo, s_hi - s_lo, 1.0), 0.0)
    weights = jnp.where(valid, s, 0.0) / jnp.maximum(valid.sum(), 1)
    return jnp.einsum("c,chw->hw", weights, act)


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear upsampling of (..., h, w) maps, align_corners=False (half-pixel centres)."""
    return jax.image.resize(maps, maps.shape[:-2] + tuple(size), method="linear", antialias=False)


def simatt_channel_weights(
    feature_fn: Callable, head_fn: Callable, params, images: jax.Array, positive: bool = True
) -> tuple[jax.Array, jax.Array]:
    """SimAtt's (T, h, w, C) explanation layers A and channel weights alpha (T, C) (§4.3) for
    ``images`` = [anchor, other, ...] (T, H, W, 3).

    w = prod_j |e_a/|e_a| - e_j/|e_j|| over the non-anchor rows j (detached), the first factor
    replaced by 1 - |...| when that row is a ``positive`` (the retrieved image); s_t = sum_d
    |e_t,d| w_d; alpha_t,c = spatial mean of ds_t/dA_t,c, the gradient taken with respect to A
    itself (the final ReLU's output, as the original) with torch's sign(0) = 0 for |e|.
    """
    feats = feature_fn(params, images)
    unit = l2_normalize(head_fn(params, feats))
    factors = jnp.abs(unit[0] - unit[1:])
    if positive:
        factors = factors.at[0].set(1.0 - factors[0])
    weight = jax.lax.stop_gradient(jnp.prod(factors, axis=0))

    def score(a):
        et = head_fn(params, a)
        return jnp.sum(et * jax.lax.stop_gradient(jnp.sign(et)) * weight)

    return feats, jax.grad(score)(feats).mean(axis=(1, 2))


@functools.partial(jax.jit, static_argnames=("feature_fn", "head_fn"))
def simatt_maps(
    feature_fn: Callable,
    head_fn: Callable,
    params,
    query: jax.Array,
    retrieved: jax.Array,
    negative: jax.Array | None = None,
) -> jax.Array:
    """SimAtt (§4.3): (T, H, W) maps of the query, the retrieved image (and the ``negative``,
    for the triplet form w = (1 - |q - p|) |q - n|): M_t = ReLU(sum_c alpha_t,c A_t,c),
    upsampled to the image size."""
    rows = [query, retrieved] + ([] if negative is None else [negative])
    images = jnp.stack(rows)
    feats, alpha = simatt_channel_weights(feature_fn, head_fn, params, images)
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

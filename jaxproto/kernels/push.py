"""Streaming nearest-patch search for prototype push (ProtoPNet/CIPL style).

Push assigns every prototype the embedding of its nearest training patch, restricted to images
of the prototype's class, greedily in prototype order with every source image used at most once
(cipl.md §4). A brute-force implementation materialises all (prototype, image) minimum distances;
here one pass over the data keeps, per prototype, only its ``k`` best candidates
(distance, image id, location, embedding), merged batch by batch with ``jax.lax.top_k``.

Exactness bound: when the greedy pass reaches prototype ``j`` (global order 0..P-1), at most
``j`` images are already used (one per earlier prototype). Each candidate of prototype ``j`` is a
distinct image, so among its ``j + 1`` best candidates at least one is unused, and the greedy
choice (the best unused candidate) is always among them. Hence keeping ``k_j = j + 1``
candidates is exact; a single ``k = P`` (or ``min(P, number of images)``) covers every
prototype. Memory: P * k * (D + 3) numbers, independent of the number of images.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.kernels.prototypes import argmin_location, min_pool


class Candidates(NamedTuple):
    """Per-prototype top-k nearest patches, sorted by distance ascending.

    distance (P, k) float32 (+inf = empty); image (P, k) int32 (-1 = empty);
    location (P, k) int32 row-major h*W + w; embedding (P, k, D) float32.
    """

    distance: jax.Array
    image: jax.Array
    location: jax.Array
    embedding: jax.Array


def exact_candidate_count(num_prototypes: int, num_images: int | None = None) -> int:
    """Smallest k that makes the streaming push exact for every prototype (see module doc)."""
    if num_prototypes < 1:
        raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
    k = num_prototypes
    if num_images is not None:
        k = min(k, max(num_images, 1))
    return k


def init_candidates(num_prototypes: int, k: int, dim: int) -> Candidates:
    """Empty candidate lists."""
    return Candidates(
        distance=jnp.full((num_prototypes, k), jnp.inf, jnp.float32),
        image=jnp.full((num_prototypes, k), -1, jnp.int32),
        location=jnp.zeros((num_prototypes, k), jnp.int32),
        embedding=jnp.zeros((num_prototypes, k, dim), jnp.float32),
    )


def merge_candidates(
    cands: Candidates,
    distance_maps: jax.Array,
    embeddings: jax.Array,
    image_ids: jax.Array,
    allowed: jax.Array,
) -> Candidates:
    """Merges one batch into the candidate lists.

    distance_maps (B, H, W, P); embeddings (B, H, W, D); image_ids (B,) int (-1 = padding);
    allowed (B, P) bool: image b may serve prototype p (class restriction). Ties keep the
    existing (earlier-streamed) candidate first, then batch order.
    """
    b, h, w, _ = distance_maps.shape
    k = cands.distance.shape[1]
    valid = allowed & (image_ids[:, None] >= 0)
    new_dist = jnp.where(valid, min_pool(distance_maps), jnp.inf).T  # (P, B)
    new_loc = argmin_location(distance_maps).T  # (P, B)
    flat = embeddings.reshape(b, h * w, -1)
    new_emb = flat[jnp.arange(b)[None, :], new_loc]  # (P, B, D)
    new_img = jnp.broadcast_to(image_ids[None, :].astype(jnp.int32), new_dist.shape)
    new_img = jnp.where(jnp.isfinite(new_dist), new_img, -1)

    dist = jnp.concatenate([cands.distance, new_dist], axis=1)
    _, top = jax.lax.top_k(-dist, k)  # stable: lower position first among ties
    pick = lambda a, x: jnp.take_along_axis(a, x, axis=1)  # noqa: E731
    return Candidates(
        distance=pick(dist, top),
        image=pick(jnp.concatenate([cands.image, new_img], axis=1), top),
        location=pick(jnp.concatenate([cands.location, new_loc], axis=1), top),
        embedding=jnp.take_along_axis(
            jnp.concatenate([cands.embedding, new_emb], axis=1), top[:, :, None], axis=1
        ),
    )


class Assignment(NamedTuple):
    """Greedy push result per prototype; image == -1 where no unused candidate existed."""

    image: np.ndarray  # (P,) int
    location: np.ndarray  # (P,) int, row-major h*W + w
    distance: np.ndarray  # (P,) float
    embedding: np.ndarray  # (P, D) float (zeros where image == -1)


def greedy_assign(cands: Candidates) -> Assignment:
    """Non-repetitive assignment in prototype order (host side; cipl.md §4 step 2).

    Candidates are visited by (distance, image id) ascending; the first image not used by any
    earlier prototype wins. ``cands`` must be host (numpy) arrays or fully addressable.
    """
    dist = np.asarray(cands.distance)
    img = np.asarray(cands.image)
    loc = np.asarray(cands.location)
    emb = np.asarray(cands.embedding)
    num_p = dist.shape[0]
    out_img = np.full((num_p,), -1, np.int64)
    out_loc = np.zeros((num_p,), np.int64)
    out_dist = np.full((num_p,), np.inf, np.float64)
    out_emb = np.zeros((num_p, emb.shape[2]), emb.dtype)
    used: set[int] = set()
    for j in range(num_p):
        order = np.lexsort((img[j], dist[j]))
        for r in order:
            if img[j, r] < 0 or not np.isfinite(dist[j, r]) or int(img[j, r]) in used:
                continue
            used.add(int(img[j, r]))
            out_img[j], out_loc[j], out_dist[j] = img[j, r], loc[j, r], dist[j, r]
            out_emb[j] = emb[j, r]
            break
    return Assignment(out_img, out_loc, out_dist, out_emb)

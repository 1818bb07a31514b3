"""Streaming nearest-patch search for CIPL's prototype push, in O(P·k) memory.

Push assigns every prototype the embedding of its nearest training patch, restricted to images
of the prototype's class, greedily in prototype order with every source image used at most once
(cipl.md §4). A brute-force implementation materialises all (prototype, image) minimum distances;
here one pass over the data keeps, per prototype, only its ``k`` best candidates as (distance,
image id, location), merged batch by batch with ``jax.lax.top_k``. The winners' embeddings are
not kept: the push recomputes them in a second pass over the (at most P) chosen images, so the
candidate buffers hold 3·P·k numbers instead of P·k·(D + 3).

Exactness bound: when the greedy pass reaches prototype ``j`` (global order 0..P-1), at most
``j`` images are already used (one per earlier prototype). Each candidate of prototype ``j`` is a
distinct image, so among its ``j + 1`` best candidates at least one is unused, and the greedy
choice (the best unused candidate) is always among them. Hence keeping ``k_j = j + 1``
candidates is exact; a single ``k = P`` (or ``min(P, number of images)``) covers every
prototype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Candidates(NamedTuple):
    """Per-prototype top-k nearest patches, sorted by distance ascending.

    distance (P, k) float32 (+inf = empty); image (P, k) int32 (-1 = empty);
    location (P, k) int32 row-major h*W + w.
    """

    distance: jax.Array
    image: jax.Array
    location: jax.Array


def exact_candidate_count(num_prototypes: int, num_images: int | None = None) -> int:
    """Smallest k that makes the streaming push exact for every prototype (see module doc)."""
    if num_prototypes < 1:
        raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
    k = num_prototypes
    if num_images is not None:
        k = min(k, max(num_images, 1))
    return k


def init_candidates(num_prototypes: int, k: int) -> Candidates:
    """Empty candidate lists."""
    return Candidates(
        distance=jnp.full((num_prototypes, k), jnp.inf, jnp.float32),
        image=jnp.full((num_prototypes, k), -1, jnp.int32),
        location=jnp.zeros((num_prototypes, k), jnp.int32),
    )


def merge_candidates(
    cands: Candidates,
    min_distances: jax.Array,
    locations: jax.Array,
    image_ids: jax.Array,
    allowed: jax.Array,
) -> Candidates:
    """Merges one batch into the candidate lists.

    min_distances (B, P) each image's nearest-patch distance per prototype; locations (B, P) int
    its row-major position (``kernels.prototypes.min_pool`` / ``argmin_location`` of the distance
    maps); image_ids (B,) int (-1 = padding); allowed (B, P) bool: image b may serve prototype p
    (class restriction). Ties keep the existing (earlier-streamed) candidate first, then batch
    order.
    """
    k = cands.distance.shape[1]
    valid = allowed & (image_ids[:, None] >= 0)
    new_dist = jnp.where(valid, min_distances, jnp.inf).T  # (P, B)
    new_img = jnp.broadcast_to(image_ids[None, :].astype(jnp.int32), new_dist.shape)
    new_img = jnp.where(jnp.isfinite(new_dist), new_img, -1)

    dist = jnp.concatenate([cands.distance, new_dist], axis=1)
    _, top = jax.lax.top_k(-dist, k)  # stable: lower position first among ties
    pick = lambda a, x: jnp.take_along_axis(a, x, axis=1)  # noqa: E731
    return Candidates(
        distance=pick(dist, top),
        image=pick(jnp.concatenate([cands.image, new_img], axis=1), top),
        location=pick(
            jnp.concatenate([cands.location, locations.T.astype(jnp.int32)], axis=1), top
        ),
    )


class Assignment(NamedTuple):
    """Greedy push result per prototype; image == -1 where no unused candidate existed."""

    image: np.ndarray  # (P,) int
    location: np.ndarray  # (P,) int, row-major h*W + w
    distance: np.ndarray  # (P,) float


def greedy_assign(cands: Candidates) -> Assignment:
    """Non-repetitive assignment in prototype order (host side; cipl.md §4 step 2).

    Candidates are visited by (distance, image id) ascending; the first image not used by any
    earlier prototype wins. ``cands`` must be host (numpy) arrays or fully addressable.
    """
    dist = np.asarray(cands.distance)
    img = np.asarray(cands.image)
    loc = np.asarray(cands.location)
    num_p = dist.shape[0]
    out_img = np.full((num_p,), -1, np.int64)
    out_loc = np.zeros((num_p,), np.int64)
    out_dist = np.full((num_p,), np.inf, np.float64)
    used: set[int] = set()
    for j in range(num_p):
        order = np.lexsort((img[j], dist[j]))
        for r in order:
            if img[j, r] < 0 or not np.isfinite(dist[j, r]) or int(img[j, r]) in used:
                continue
            used.add(int(img[j, r]))
            out_img[j], out_loc[j], out_dist[j] = img[j, r], loc[j, r], dist[j, r]
            break
    return Assignment(out_img, out_loc, out_dist)


def patches_at(embeddings: jax.Array, locations: jax.Array) -> jax.Array:
    """embeddings (B, H, W, D), locations (B,) row-major -> the patch vectors (B, D)."""
    b, h, w, d = embeddings.shape
    return embeddings.reshape(b, h * w, d)[jnp.arange(b), locations]

"""Distances and the batch-all triplet loss of X-MIR (specs/xmir.md §2.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# torch.cdist switches to the matmul form when either side has more than this many rows.
_CDIST_MM_ROWS = 25
_CDIST_CLAMP = 1e-30


def pairwise_distances(x: jax.Array, y: jax.Array | None = None, mode: str = "auto") -> jax.Array:
    """Euclidean distances between the rows of ``x`` (N, D) and ``y`` (M, D), as torch.cdist.

    ``mode``: "auto" (torch's rule: matmul form when N > 25 or M > 25, direct otherwise),
    "matmul" (sqrt(clamp_min(|x|^2 + |y|^2 - 2 x.y, 1e-30)), spec pitfall 4) or "direct".
    Both forms have finite gradients at zero distance (the direct form gives 0 there, as torch).
    """
    y = x if y is None else y
    if mode not in ("auto", "matmul", "direct"):
        raise ValueError(f"distance mode must be auto, matmul or direct, got {mode!r}")
    use_mm = mode == "matmul" or (
        mode == "auto" and (x.shape[0] > _CDIST_MM_ROWS or y.shape[0] > _CDIST_MM_ROWS)
    )
    if use_mm:
        x2 = jnp.sum(x * x, axis=-1)[:, None]
        y2 = jnp.sum(y * y, axis=-1)[None, :]
        d2 = x2 + y2 - 2.0 * (x @ y.T)
        return jnp.sqrt(jnp.maximum(d2, _CDIST_CLAMP))
    d2 = jnp.sum(jnp.square(x[:, None, :] - y[None, :, :]), axis=-1)
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def batch_all_triplet_loss(
    embeddings: jax.Array, labels: jax.Array, margin: float = 0.2, distance_mode: str = "auto"
) -> tuple[jax.Array, jax.Array]:
    """Batch-all triplet loss averaged over the *positive* triplets (spec §2.3).

    Valid triplets (a, p, n): a != p, y_a == y_p, y_a != y_n. Returns (loss, N+/#valid), where
    loss = sum max(0, D_ap - D_an + m) / (N+ + 1e-16) and N+ counts losses > 1e-16.
    """
    d = pairwise_distances(embeddings, mode=distance_mode)
    n = embeddings.shape[0]
    same = labels[:, None] == labels[None, :]
    pos_pair = same & ~jnp.eye(n, dtype=bool)
    valid = pos_pair[:, :, None] & ~same[:, None, :]
    per_triplet = jax.nn.relu((d[:, :, None] - d[:, None, :] + margin) * valid)
    num_positive = jnp.sum(per_triplet > 1e-16).astype(jnp.float32)
    num_valid = jnp.sum(valid).astype(jnp.float32)
    loss = jnp.sum(per_triplet) / (num_positive + 1e-16)
    return loss, num_positive / (num_valid + 1e-16)

"""Prototype usage in stage 2 and dead-prototype revival (issue #15; spec §6 diagnostic, §9 flag
``prototype_revival``).

A prototype is *alive* when it wins at least one assignment on the training set: it is the
nearest (largest cosine) of its concept's M prototypes for some projected local concept vector
v'^k_i of an image that contains concept k (the atlas hit count, spec §6). With γ = 1000 the
soft assignment of Eqs. 6–8 is nearly hard, so a prototype that wins nothing gets almost no
gradient and stays dead (the known collapse). Revival re-seeds a prototype that has been dead
for ``patience`` consecutive epochs with a concept vector of its own concept that is far from
every alive prototype (greedy farthest point), and zeroes its optimizer moments.
"""

from __future__ import annotations

import numpy as np

from jaxproto.common import trees


def usage_stats(hits: np.ndarray) -> dict[str, list[float]]:
    """Per concept: alive count (hit count > 0) and usage entropy in nats of the hit
    distribution over its M prototypes (0 = one prototype takes everything, log M = uniform)."""
    hits = np.asarray(hits, np.float64)
    total = hits.sum(axis=1, keepdims=True)
    p = np.divide(hits, total, out=np.zeros_like(hits), where=total > 0)
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return {
        "alive": (hits > 0).sum(axis=1).astype(int).tolist(),
        "entropy": (0.0 - (p * logp).sum(axis=1)).tolist(),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def revive(
    prototypes: np.ndarray,
    hits: np.ndarray,
    dead_epochs: np.ndarray,
    patience: int,
    vectors: np.ndarray,
    present: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-seeds the prototypes dead for ``patience`` epochs or more.

    prototypes (K, M, D) raw, hits (K, M), dead_epochs (K, M) consecutive epochs without a hit,
    vectors (N, K, D) projected training concept vectors, present (N, K) bool. Each revived
    prototype becomes the present vector of its concept whose largest cosine to the concept's
    alive (and already revived) prototypes is smallest, scaled to the alive prototypes' mean
    norm. Returns (new prototypes, revived mask (K, M)).
    """
    protos = np.array(prototypes, np.float32, copy=True)
    revived = np.zeros(hits.shape, bool)
    norms = np.linalg.norm(protos, axis=-1)
    for k in range(protos.shape[0]):
        dead = np.flatnonzero(dead_epochs[k] >= patience)
        cand = _unit(np.asarray(vectors[present[:, k], k], np.float64))
        if dead.size == 0 or cand.shape[0] == 0:
            continue
        alive = hits[k] > 0
        ref = _unit(np.asarray(protos[k, alive], np.float64))
        closest = (cand @ ref.T).max(axis=1) if ref.shape[0] else np.full(len(cand), -1.0)
        scale = float(norms[k, alive].mean()) if alive.any() else float(norms[k].mean())
        for m in dead:
            j = int(np.argmin(closest))
            protos[k, m] = (cand[j] * scale).astype(np.float32)
            revived[k, m] = True
            closest = np.maximum(closest, cand @ cand[j])
    return protos, revived


def reset_moments(opt_state, revived: np.ndarray, leaf: str = "prototypes"):
    """The optimizer state with the rows [k, m] of every ``leaf``-shaped moment (Adam mu, nu)
    zeroed where ``revived`` (a fresh optimizer state for the revived prototypes)."""
    keep = ~revived[..., None]

    def one(name: str, x):
        if name.split("/")[-1] == leaf and np.ndim(x) == 3 and np.shape(x)[:2] == revived.shape:
            return np.where(keep, np.asarray(x), 0).astype(np.asarray(x).dtype)
        return x

    return trees.map_with_names(one, opt_state)

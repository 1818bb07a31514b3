"""Prototype usage in stage 2 and dead-prototype revival (issue #15; spec §6 diagnostic, §9 flag
``prototype_revival``).

A prototype is *alive* when it wins at least one assignment on the training set: it is the
nearest (largest cosine) of its concept's M prototypes for some projected local concept vector
v'^k_i of an image that contains concept k (the atlas hit count, spec §6). With γ = 1000 the
soft assignment of Eqs. 6–8 is nearly hard, so a prototype that wins nothing gets almost no
gradient and stays dead (the known collapse). Revival re-seeds a prototype that has been dead
for ``patience`` consecutive epochs with a concept vector of its own concept, with fresh
optimizer moments. Where the seed comes from (``model.revival_seed``):

- ``split`` (default): bisect the concept's most used prototype's cluster (two-means on the
  vectors it wins, started from the halves along their principal direction) and seed at the
  vector nearest the centre of the half farther from that prototype, so the revived prototype
  wins a real share of that cluster at once;
- ``farthest``: the vector farthest from every alive prototype (greedy farthest point). Such a
  vector is an outlier; under γ = 1000 the revived prototype wins that vector and a few
  neighbours, the projector pulls them back to the incumbent and it dies again.
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


SEEDS = ("split", "farthest")


def _farthest_seeds(cand: np.ndarray, ref: np.ndarray, count: int) -> list[int]:
    """Greedy farthest point: rows of ``cand`` whose largest cosine to ``ref`` and to the rows
    already chosen is smallest."""
    closest = (cand @ ref.T).max(axis=1) if ref.shape[0] else np.full(len(cand), -1.0)
    out = []
    for _ in range(count):
        j = int(np.argmin(closest))
        out.append(j)
        closest = np.maximum(closest, cand @ cand[j])
    return out


def _split_seed(members: np.ndarray, incumbent: np.ndarray, iters: int = 10) -> int | None:
    """Row of ``members`` (the unit vectors won by the prototype ``incumbent``) that seeds the
    half of a two-means split of them farther from the incumbent: the member nearest that
    half's centre. Two-means starts from the halves on either side of the median along the
    principal direction (an extreme start, e.g. the farthest vector, would only split off
    outliers). None when the members do not split."""
    centred = members - members.mean(axis=0)
    _, vecs = np.linalg.eigh(centred.T @ centred)
    proj = centred @ vecs[:, -1]
    side = proj > np.median(proj)
    for _ in range(iters):
        if side.all() or not side.any():
            return None
        a, b = _unit(members[~side].mean(axis=0)), _unit(members[side].mean(axis=0))
        new = members @ b > members @ a
        if np.array_equal(new, side):
            break
        side = new
    if side.all() or not side.any():
        return None
    a, b = _unit(members[~side].mean(axis=0)), _unit(members[side].mean(axis=0))
    if incumbent @ b > incumbent @ a:
        side, b = ~side, a
    rows = np.flatnonzero(side)
    return int(rows[np.argmax(members[rows] @ b)])


def revive(
    prototypes: np.ndarray,
    hits: np.ndarray,
    dead_epochs: np.ndarray,
    patience: int,
    vectors: np.ndarray,
    present: np.ndarray,
    seed: str = "split",
) -> tuple[np.ndarray, np.ndarray]:
    """Re-seeds the prototypes dead for ``patience`` epochs or more.

    prototypes (K, M, D) raw, hits (K, M), dead_epochs (K, M) consecutive epochs without a hit,
    vectors (N, K, D) projected training concept vectors, present (N, K) bool. Each revived
    prototype becomes a present vector of its concept chosen by ``seed`` (module docstring;
    with ``split`` the clusters are re-assigned after each seed, so several dead prototypes
    bisect the concept's vectors in turn, largest cluster first), scaled to the alive
    prototypes' mean norm. A prototype stays dead when no cluster can be split. Returns (new
    prototypes, revived mask (K, M)).
    """
    if seed not in SEEDS:
        raise ValueError(f"revival seed must be one of {SEEDS}, got {seed!r}")
    protos = np.array(prototypes, np.float32, copy=True)
    revived = np.zeros(hits.shape, bool)
    norms = np.linalg.norm(protos, axis=-1)
    for k in range(protos.shape[0]):
        dead = np.flatnonzero(dead_epochs[k] >= patience)
        cand = _unit(np.asarray(vectors[present[:, k], k], np.float64))
        if dead.size == 0 or cand.shape[0] == 0:
            continue
        alive = hits[k] > 0
        scale = float(norms[k, alive].mean()) if alive.any() else float(norms[k].mean())
        units = _unit(np.asarray(protos[k], np.float64))
        if seed == "farthest":
            chosen = _farthest_seeds(cand, units[alive], dead.size)
            for m, j in zip(dead, chosen, strict=True):
                protos[k, m] = (cand[j] * scale).astype(np.float32)
                revived[k, m] = True
            continue
        live = np.flatnonzero(alive)
        if not live.size:  # nothing alive: the first one starts at the concept's medoid
            m, dead = dead[0], dead[1:]
            j = int(np.argmax(cand @ _unit(cand.mean(axis=0))))
            protos[k, m], units[m], revived[k, m] = cand[j] * scale, cand[j], True
            live = np.array([m])
        owner = live[np.argmax(cand @ units[live].T, axis=1)]
        for m in dead:
            big = int(np.argmax(np.bincount(owner, minlength=len(units))))
            rows = np.flatnonzero(owner == big)
            split = _split_seed(cand[rows], units[big])
            if split is None:
                break
            j = int(rows[split])
            protos[k, m], units[m], revived[k, m] = cand[j] * scale, cand[j], True
            owner[rows[cand[rows] @ cand[j] > cand[rows] @ units[big]]] = m
    return protos, revived


def reset_moments(opt_state, revived: np.ndarray, leaf: str = "prototypes"):
    """The optimizer state with fresh moments for the revived prototypes [k, m]: first moments
    (Adam ``mu``) zeroed, second moments (``nu``) set to the mean over the concept's other
    prototypes. Zeroing ``nu`` as well would make the next steps several times larger than
    for any other prototype (Adam's bias correction is global, its step count is long past
    the start), throwing the re-seeded prototype away from the data it was seeded on."""
    keep = ~revived[..., None]

    def one(name: str, x):
        if name.split("/")[-1] != leaf or np.ndim(x) != 3 or np.shape(x)[:2] != revived.shape:
            return x
        x = np.asarray(x)
        if "/nu/" in f"/{name}/":
            others = np.where(keep, x, 0).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)
            return np.where(keep, x, others[:, None, :]).astype(x.dtype)
        return np.where(keep, x, 0).astype(x.dtype)

    return trees.map_with_names(one, opt_state)

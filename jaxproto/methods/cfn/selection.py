"""Greedy facility-location selection of K diverse CAVs on cosine similarity (cfn.md §7).

Objective (apricot's FacilityLocationSelection with metric 'cosine', naive greedy, gains clipped
at the zero initial coverage): f(S) = sum_i max(0, max_{j in S} cos(c_i, c_j)). Lazy greedy
(Minoux): marginal gains only shrink, so a gain refreshed in the current round that tops the
heap of (possibly stale) upper bounds is the best.
"""

from __future__ import annotations

import heapq

import numpy as np


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v @ v.T


def facility_location(similarity: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """(selected indices in selection order, objective after each pick)."""
    s = np.asarray(similarity, np.float64)
    n = s.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"cannot select k={k} of {n} items")
    cover = np.zeros(n)
    gains = np.maximum(s, 0.0).sum(axis=0)
    # Heap of (-upper bound, index, pick round the bound was computed in).
    heap = [(-g, j, 0) for j, g in enumerate(gains)]
    heapq.heapify(heap)
    chosen, values, total = [], [], 0.0
    while len(chosen) < k:
        neg, j, when = heapq.heappop(heap)
        if when != len(chosen):  # stale bound: refresh and put back
            fresh = float(np.maximum(s[:, j] - cover, 0.0).sum())
            heapq.heappush(heap, (-fresh, j, len(chosen)))
            continue
        chosen.append(j)
        cover = np.maximum(cover, s[:, j])
        total += -neg
        values.append(total)
    return chosen, values

"""Greedy facility-location selection of K diverse CAVs on cosine similarity (cfn.md §7).

Objective (apricot's FacilityLocationSelection with metric 'cosine', naive greedy, gains clipped
at the zero initial coverage): f(S) = sum_i max(0, max_{j in S} cos(c_i, c_j)). Lazy greedy
(Minoux): marginal gains only shrink, so a stale upper bound that still tops the heap after
refreshing is the true best.
"""

from __future__ import annotations

import heapq

import numpy as np


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v @ v.T


def facility_location(similarity: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """(selected indices in selection order, objective after each pick); ties -> lowest index."""
    s = np.asarray(similarity, np.float64)
    n = s.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"cannot select k={k} of {n} items")
    cover = np.zeros(n)
    gains = np.maximum(s, 0.0).sum(axis=0)
    heap = [(-g, j) for j, g in enumerate(gains)]
    heapq.heapify(heap)
    chosen, values, total = [], [], 0.0
    while len(chosen) < k:
        neg, j = heapq.heappop(heap)
        fresh = float(np.maximum(s[:, j] - cover, 0.0).sum())
        if heap and fresh < -heap[0][0] - 1e-12 * max(1.0, abs(fresh)):
            heapq.heappush(heap, (-fresh, j))
            continue
        if heap and abs(fresh + heap[0][0]) <= 1e-12 * max(1.0, abs(fresh)) and heap[0][1] < j:
            heapq.heappush(heap, (-fresh, j))  # equal gain: the lower index first, as naive greedy
            continue
        chosen.append(j)
        cover = np.maximum(cover, s[:, j])
        total += fresh
        values.append(total)
    return chosen, values

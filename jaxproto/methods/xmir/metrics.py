"""Leave-one-out retrieval metrics on a test split (specs/xmir.md §3) and anomaly measures (§2.5).

Every test image queries all the other test images, ranked by Euclidean distance of unit
embeddings. Reported (fractions in [0, 1]):

* ``R@K``: hit rate -- share of queries with at least one same-label item in the top K;
* ``P@K``: mean share of same-label items among the top K;
* ``mAP``: cirtorch's trapezoid AP. With ``map_includes_self=True`` (faithful default) the query
  itself counts as a positive at the last rank (the original's quirk); with False it is excluded;
* ``MAP@R``: mean average precision at R (R = number of other same-label items), self excluded;
* ``mean_average_precision``: non-interpolated AP over the whole ranking, self excluded
  (pytorch-metric-learning's definition);
* ``r_precision``: share of same-label items among the top R (pytorch-metric-learning).

Queries whose class has no other item follow the ``no_positive`` policy (misses or excluded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def distance_matrix(embeddings: np.ndarray) -> np.ndarray:
    """Euclidean distances between all rows, float64 (for ranking)."""
    e = np.asarray(embeddings, np.float64)
    sq = np.sum(e * e, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * e @ e.T
    return np.sqrt(np.maximum(d2, 0.0))


def ranked_relevance(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, N-1) bool: for each query, whether each other item (nearest first) shares its label."""
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        raise ValueError(f"leave-one-out retrieval needs at least 2 items, got {n}")
    d = distance_matrix(embeddings)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, : n - 1]
    return labels[order] == labels[:, None]


def trapezoid_ap(positive_ranks: np.ndarray) -> float:
    """cirtorch ``compute_ap``: 0-based ranks of the positives, ascending."""
    ap = 0.0
    nres = len(positive_ranks)
    for j, rank in enumerate(positive_ranks):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) / (2.0 * nres)
    return ap


NO_POSITIVE_POLICIES = ("miss", "exclude")


def retrieval_metrics(
    embeddings: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    map_includes_self: bool = True,
    no_positive: str = "miss",
) -> dict[str, float]:
    """R@K, P@K, mAP, MAP@R, mean_average_precision and r_precision of leave-one-out retrieval
    (see the module docstring).

    ``no_positive`` is the policy for queries with no other item of their class: "miss" (they
    score 0 in every self-excluding metric, as the original's R@K) or "exclude" (left out of
    those means, as pytorch-metric-learning). The faithful mAP (``map_includes_self``) always
    has the query itself as a positive.
    """
    if no_positive not in NO_POSITIVE_POLICIES:
        raise ValueError(f"no_positive must be one of {NO_POSITIVE_POLICIES}, got {no_positive!r}")
    labels = np.asarray(labels).reshape(-1)
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(
            f"embeddings must be (N, D) with N = len(labels) = {labels.shape[0]}, "
            f"got {embeddings.shape}"
        )
    rel = ranked_relevance(embeddings, labels)
    n = rel.shape[0]
    r = rel.sum(axis=1)  # R: the other items of the query's class
    has = r > 0
    keep = has if no_positive == "exclude" else np.ones(n, bool)

    def mean(values: np.ndarray) -> float:
        """Mean over the kept queries; a query without positives scores 0 under "miss"."""
        v = np.where(has, values, 0.0)[keep]
        return float(np.mean(v)) if v.size else 0.0

    out: dict[str, float] = {}
    for k in ks:
        if not 1 <= k <= n - 1:
            raise ValueError(f"K={k} must be in [1, {n - 1}] for {n} items")
        out[f"R@{k}"] = mean(np.any(rel[:, :k], axis=1).astype(np.float64))
        out[f"P@{k}"] = mean(np.sum(rel[:, :k], axis=1) / k)
    if map_includes_self:
        out["mAP"] = float(
            np.mean([trapezoid_ap(np.append(np.flatnonzero(row), n - 1)) for row in rel])
        )
    else:
        out["mAP"] = mean(np.array([trapezoid_ap(np.flatnonzero(row)) for row in rel]))
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, n)[None, :]
    in_r = np.arange(n - 1)[None, :] < r[:, None]
    safe_r = np.maximum(r, 1)
    out["MAP@R"] = mean(np.sum(prec * rel * in_r, axis=1) / safe_r)
    # pytorch-metric-learning's non-interpolated AP over the whole ranking and R-precision
    out["mean_average_precision"] = mean(np.sum(prec * rel, axis=1) / safe_r)
    out["r_precision"] = mean(np.sum(rel * in_r, axis=1) / safe_r)
    return out


def anomaly_scores(
    train_embeddings: np.ndarray, train_labels: np.ndarray, test_embeddings: np.ndarray
) -> np.ndarray:
    """Distance to the nearest training-class centroid, divided by its maximum (spec §2.5).

    Centroids are means of the unit training embeddings, not renormalised.
    """
    train_labels = np.asarray(train_labels)
    classes = np.unique(train_labels)
    centroids = np.stack([train_embeddings[train_labels == c].mean(axis=0) for c in classes])
    d = np.linalg.norm(test_embeddings[:, None, :] - centroids[None, :, :], axis=-1).min(axis=1)
    return d / d.max()


def anomaly_measures(scores: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR and FPR at 95 % TPR with the anomaly class positive (the intended call of
    the original's ``get_measures(_pos, _neg)``, §2.5)."""
    is_anomaly = np.asarray(is_anomaly, bool)
    if is_anomaly.all() or not is_anomaly.any():
        raise ValueError("anomaly measures need both anomalous and normal test items")
    fpr, tpr, _ = roc_curve(is_anomaly, scores, drop_intermediate=False)
    return {
        "auroc": float(roc_auc_score(is_anomaly, scores)),
        "aupr": float(average_precision_score(is_anomaly, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }

"""Leave-one-out retrieval metrics against explicit loops (cirtorch / PML definitions)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxproto.methods.xmir.metrics import anomaly_measures, anomaly_scores, retrieval_metrics


def _reference(emb, labels, ks, include_self, no_positive="miss"):
    """Per-query loops; a query without positives scores 0 ("miss") or is skipped."""
    emb = emb.astype(np.float64)
    n = len(labels)
    rows = {f"R@{k}": [] for k in ks} | {f"P@{k}": [] for k in ks}
    for key in ("mAP", "MAP@R", "mean_average_precision", "r_precision"):
        rows[key] = []
    for i in range(n):
        dists = sorted((np.sqrt(np.sum((emb[i] - emb[j]) ** 2)), j) for j in range(n) if j != i)
        others = [labels[j] == labels[i] for _, j in dists]
        r_count = sum(others)
        if r_count == 0 and no_positive == "exclude":
            if include_self:  # only the query itself, at the last rank: AP = (0 + 1/n) / 2
                rows["mAP"].append(0.5 / n)
            continue
        for k in ks:
            rows[f"R@{k}"].append(1.0 if any(others[:k]) else 0.0)
            rows[f"P@{k}"].append(sum(others[:k]) / k)
        rel = others + ([True] if include_self else [])  # the original ranks itself last
        pos = [r for r, is_rel in enumerate(rel) if is_rel]
        ap = 0.0
        for j, r in enumerate(pos):  # cirtorch's trapezoid
            ap += 0.5 * ((1.0 if r == 0 else j / r) + (j + 1) / (r + 1)) / len(pos)
        rows["mAP"].append(ap)
        found, at_r, full = 0, 0.0, 0.0
        for r, is_rel in enumerate(others):
            if is_rel:
                found += 1
                full += found / (r + 1)
                if r < r_count:
                    at_r += found / (r + 1)
        rows["MAP@R"].append(at_r / r_count if r_count else 0.0)
        rows["mean_average_precision"].append(full / r_count if r_count else 0.0)
        rows["r_precision"].append(sum(others[:r_count]) / r_count if r_count else 0.0)
    return {k: float(np.mean(v)) for k, v in rows.items()}


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("no_positive", ["miss", "exclude"])
def test_metrics_match_loops(include_self, no_positive):
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 3, size=40), [7, 8]])  # two singleton classes
    emb = rng.normal(size=(42, 6)) + 1.5 * np.eye(9, 6)[np.minimum(labels, 5)]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = retrieval_metrics(
        emb.astype(np.float32),
        labels,
        ks=(1, 5, 10),
        map_includes_self=include_self,
        no_positive=no_positive,
    )
    ref = _reference(emb, labels, (1, 5, 10), include_self, no_positive)
    assert set(got) == set(ref)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["R@1"] == got["P@1"]


def test_pml_definitions_by_hand():
    # one query's ranking of the 4 others: relevant, not, relevant, not (R = 2)
    emb = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    labels = np.array([0, 0, 1, 0, 1])
    got = retrieval_metrics(emb, labels, ks=(1,), map_includes_self=False)
    # query 0: others by distance 1(0) 2(1) 3(0) 4(1) -> rel [T, F, T, F]; AP = (1 + 2/3)/2
    ap0, rp0 = (1 + 2 / 3) / 2, 1 / 2
    per_query = []
    for i in range(5):
        d = np.abs(emb[:, 0] - emb[i, 0])
        d[i] = np.inf
        order = np.argsort(d, kind="stable")[:4]
        rel = labels[order] == labels[i]
        hits = np.cumsum(rel)
        per_query.append(
            (np.sum(hits / np.arange(1, 5) * rel) / rel.sum(), rel[: rel.sum()].mean())
        )
    assert per_query[0] == pytest.approx((ap0, rp0))
    assert got["mean_average_precision"] == pytest.approx(np.mean([p[0] for p in per_query]))
    assert got["r_precision"] == pytest.approx(np.mean([p[1] for p in per_query]))


def test_map_with_self_closed_form():
    # perfectly separated classes of size m among N: positives at ranks 0..m-2, self at N-1
    labels = np.repeat(np.arange(3), 5)
    emb = np.eye(3, 4)[labels] + 0.01 * np.random.default_rng(1).normal(size=(15, 4))
    m, n = 5, 15
    expected = (m - 1 + 0.5 * ((m - 1) / (n - 1) + m / n)) / m
    got = retrieval_metrics(emb, labels, ks=(1,), map_includes_self=True)
    assert got["mAP"] == pytest.approx(expected)
    assert retrieval_metrics(emb, labels, ks=(1,), map_includes_self=False)["mAP"] == 1.0
    assert got["MAP@R"] == 1.0 and got["R@1"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="no_positive"):
        retrieval_metrics(np.ones((5, 2)), np.zeros(5), ks=(1,), no_positive="skip")
    with pytest.raises(ValueError, match="K=20"):
        retrieval_metrics(np.ones((5, 2)), np.zeros(5), ks=(20,))
    with pytest.raises(ValueError, match="embeddings must be"):
        retrieval_metrics(np.ones((5, 2)), np.zeros(4))


def test_anomaly_measures():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(20, 4))
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    train_labels = np.repeat([0, 1], 10)
    test = rng.normal(size=(12, 4))
    scores = anomaly_scores(train, train_labels, test)
    centroids = np.stack([train[:10].mean(0), train[10:].mean(0)])
    ref = np.array([min(np.linalg.norm(t - c) for c in centroids) for t in test])
    np.testing.assert_allclose(scores, ref / ref.max())
    is_anom = np.arange(12) % 3 == 0
    got = anomaly_measures(scores, is_anom)
    assert got["auroc"] == pytest.approx(roc_auc_score(is_anom, scores))
    with pytest.raises(ValueError, match="both"):
        anomaly_measures(scores, np.zeros(12, bool))

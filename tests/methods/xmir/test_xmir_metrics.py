"""Leave-one-out retrieval metrics against explicit loops (cirtorch / PML definitions)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxproto.methods.xmir.metrics import anomaly_measures, anomaly_scores, retrieval_metrics


def _reference(emb, labels, ks, include_self):
    emb = emb.astype(np.float64)
    n = len(labels)
    hit = {k: [] for k in ks}
    prec = {k: [] for k in ks}
    aps, maprs = [], []
    for i in range(n):
        dists = []
        for j in range(n):
            if j != i:
                dists.append((np.sqrt(np.sum((emb[i] - emb[j]) ** 2)), j))
        dists.sort()
        ranked = [j for _, j in dists]
        if include_self:
            ranked.append(i)  # the original ranks the query itself last (diagonal -inf)
        rel = [labels[j] == labels[i] for j in ranked]
        for k in ks:
            top = rel[:k]
            hit[k].append(1.0 if any(top) else 0.0)
            prec[k].append(sum(top) / k)
        pos = [r for r, is_rel in enumerate(rel) if is_rel]
        if pos:
            ap = 0.0
            for j, r in enumerate(pos):
                p0 = 1.0 if r == 0 else j / r
                p1 = (j + 1) / (r + 1)
                ap += 0.5 * (p0 + p1) / len(pos)
            aps.append(ap)
        r_count = sum(labels[j] == labels[i] for j in range(n) if j != i)
        if r_count:
            others = rel[: n - 1]
            s, found = 0.0, 0
            for r in range(r_count):
                if others[r]:
                    found += 1
                    s += found / (r + 1)
            maprs.append(s / r_count)
    out = {f"R@{k}": np.mean(hit[k]) for k in ks}
    out.update({f"P@{k}": np.mean(prec[k]) for k in ks})
    out["mAP"] = np.mean(aps)
    out["MAP@R"] = np.mean(maprs)
    return out


@pytest.mark.parametrize("include_self", [True, False])
def test_metrics_match_loops(include_self):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=40)
    emb = rng.normal(size=(40, 6)) + 1.5 * np.eye(3, 6)[labels]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = retrieval_metrics(
        emb.astype(np.float32), labels, ks=(1, 5, 10), map_includes_self=include_self
    )
    ref = _reference(emb, labels, (1, 5, 10), include_self)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["R@1"] == got["P@1"]


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

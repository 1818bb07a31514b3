"""The concept bottleneck's classifier (cfn.md §8): logistic regression on the OMP rebuild f_hat
(``reconstruction``, default) or on the OMP weights w (``weights``), with C chosen on the
validation split: a coarse grid, then ``bisection_rounds`` rounds over [0.1, 10] x the best
coarse C in log space (each round keeps the better half around the midpoint).

Multi-class: one multinomial lbfgs model. Multi-label (MIMIC): one binary model per label, C
chosen on the mean per-label validation accuracy.

CBM reading (cfn.md §8): logit_y = sum_k w_k (a_y . c_k) + beta (a_y . 1) + b_y, so with
V[y, k] = a_y . c_k the concept contributions are w_k V[y, k] and beta (a_y . 1) is a residual.
"""

from __future__ import annotations

import logging

import numpy as np

from jaxproto.core import metrics as metrics_lib

log = logging.getLogger(__name__)

COARSE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def fit(x: np.ndarray, y: np.ndarray, c: float, multilabel: bool, max_iter: int):
    """(coef (C, F), intercept (C,)) of the logistic regression at inverse regularisation ``c``."""
    from sklearn.linear_model import LogisticRegression

    if multilabel:
        coefs, ints = [], []
        for j in range(y.shape[1]):
            if len(np.unique(y[:, j])) < 2:  # a label constant in train: predict its prior
                coefs.append(np.zeros(x.shape[1]))
                ints.append(30.0 if y[0, j] > 0.5 else -30.0)
                continue
            m = LogisticRegression(C=c, max_iter=max_iter).fit(x, y[:, j])
            coefs.append(m.coef_[0])
            ints.append(float(m.intercept_[0]))
        return np.stack(coefs), np.asarray(ints)
    m = LogisticRegression(C=c, max_iter=max_iter).fit(x, y.argmax(1))
    coef, intercept = m.coef_, m.intercept_
    if coef.shape[0] == 1:  # binary sklearn model: expand to one logit per class
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    return coef, intercept


def logits(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    return x @ coef.T + intercept


def accuracy(y: np.ndarray, scores: np.ndarray, multilabel: bool) -> float:
    """Argmax accuracy; multi-label: mean per-label accuracy at logit 0 (the code's 'accuracy')."""
    if multilabel:
        return float(((scores > 0) == (y > 0.5)).mean())
    return float((scores.argmax(1) == y.argmax(1)).mean())


def search_c(
    x_tr, y_tr, x_val, y_val, multilabel: bool, max_iter: int, rounds: int
) -> tuple[float, list[tuple[float, float]]]:
    """(chosen C, [(C, val accuracy)] tried)."""
    tried: dict[float, float] = {}

    def score(log_c: float) -> float:
        c = float(np.exp(log_c))
        if c not in tried:
            coef, b = fit(x_tr, y_tr, c, multilabel, max_iter)
            tried[c] = accuracy(y_val, logits(x_val, coef, b), multilabel)
        return tried[c]

    coarse = [(score(np.log(c)), -i, c) for i, c in enumerate(COARSE_GRID)]
    peak = max(coarse)[2]
    lo, hi = np.log(0.1 * peak), np.log(10.0 * peak)
    best_log = np.log(peak)
    for _ in range(rounds):
        mid = 0.5 * (lo + hi)
        left, right = 0.5 * (lo + mid), 0.5 * (mid + hi)
        if score(left) >= score(right):
            hi = mid
        else:
            lo = mid
        for cand in (left, right):
            if score(cand) > score(best_log):
                best_log = cand
    return float(np.exp(best_log)), sorted(tried.items())


def classification_metrics(labels: np.ndarray, scores: np.ndarray, names, multilabel: bool) -> dict:
    """Accuracy (mean per-label for multi-label) plus per-class AUC from the logits; for
    multi-label also each label's accuracy at logit 0 (``label_accuracy``)."""
    rep = metrics_lib.classification_report(labels, probabilities(scores, multilabel), list(names))
    rep["accuracy"] = accuracy(labels, scores, multilabel)
    if multilabel:
        correct = (scores > 0) == (labels > 0.5)
        rep["label_accuracy"] = {n: float(correct[:, i].mean()) for i, n in enumerate(names)}
    return rep


def probabilities(scores: np.ndarray, multilabel: bool) -> np.ndarray:
    """Sigmoid (multi-label) or softmax of logits."""
    if multilabel:
        return 1 / (1 + np.exp(-scores))
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

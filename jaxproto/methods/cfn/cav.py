"""Concept activation vectors per SAE latent (cfn.md §6; no released code, TCAV-style default).

``linear_probe``: positives are latent j's top-n training images (``top20``) or every image with
z_j > 0 (``active``), negatives a seeded random sample of the others (``negatives_per_positive``
times as many, at least ``min_negatives``); a logistic regression or linear SVM on f(x) gives the
normal w, c_j = w / ||w||. ``decoder_column``: c_j = the SAE's unit decoder atom (a deviation,
no fitting).
"""

from __future__ import annotations

import logging

import numpy as np

from jaxproto.core import logging as log_lib

log = logging.getLogger(__name__)


def _classifier(kind: str, seed: int):
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=1000)
    if kind == "linear_svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(random_state=seed)
    raise ValueError(f"cfn.cav.classifier must be 'logreg' or 'linear_svm', got {kind!r}")


def positives_of(z_col: np.ndarray, top: np.ndarray, mode: str) -> np.ndarray:
    """Row indices of latent j's positive images."""
    if mode == "top20":
        return np.asarray(top)
    if mode == "active":
        return np.flatnonzero(z_col > 0)
    raise ValueError(f"cfn.cav.positives must be 'top20' or 'active', got {mode!r}")


def linear_probe_cavs(
    emb: np.ndarray,
    z: np.ndarray,
    latents: np.ndarray,
    topk: np.ndarray,
    positives: str,
    classifier: str,
    negatives_per_positive: float,
    min_negatives: int,
    seed: int,
) -> np.ndarray:
    """(len(latents), D) unit CAVs; ``topk[i]`` are latent ``latents[i]``'s top image rows."""
    n = len(emb)
    out = np.zeros((len(latents), emb.shape[1]), np.float32)
    progress = log_lib.Progress(len(latents), 0, "cav", 1)
    try:
        for i, j in enumerate(latents):
            rng = np.random.default_rng([seed, int(j)])
            pos = positives_of(z[:, j], topk[i], positives)
            others = np.setdiff1d(np.arange(n), pos)
            n_neg = min(len(others), max(min_negatives, int(negatives_per_positive * len(pos))))
            neg = rng.choice(others, size=n_neg, replace=False)
            xs = np.concatenate([emb[pos], emb[neg]])
            ys = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
            w = _classifier(classifier, seed).fit(xs, ys).coef_[0]
            out[i] = w / max(np.linalg.norm(w), 1e-12)
            progress.update(i + 1)
    finally:
        progress.close()
    return out


def decoder_cavs(decoder: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """The SAE's decoder atoms (Flax rows) of ``latents``, renormalised."""
    atoms = np.asarray(decoder, np.float32)[latents]
    return atoms / np.maximum(np.linalg.norm(atoms, axis=1, keepdims=True), 1e-12)

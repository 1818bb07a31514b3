"""Foreign input is flagged, not diagnosed: image sanity and a feature-space out-of-distribution
score (Mahalanobis distance to training-set statistics stored in the export).

Features are the method's pooled backbone features (``outputs.FEATURES``) when its ``predict``
returns them, else its other per-image float outputs (logits, embeddings, concept logits)
concatenated -- the Mahalanobis score of a classifier's logits is the weaker, method-independent
variant. The threshold is a quantile (default 0.99) of held-out training-set distances.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from jaxproto.common.errors import CheckpointError
from jaxproto.core import outputs
from jaxproto.data import images

OOD_FILE = "ood.json"
FALLBACK_KEYS = (outputs.LOGITS, outputs.EMBEDDING, outputs.CONCEPT_LOGITS)
MIN_SIDE = 32  # pixels: smaller images are not medical images at any resolution we train on


def feature_matrix(predictions: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(N, D) float64 features from ``Method.predict`` outputs and the keys they came from."""
    keys = [outputs.FEATURES] if outputs.FEATURES in predictions else []
    keys = keys or [k for k in FALLBACK_KEYS if k in predictions]
    if not keys:
        raise ValueError(f"no feature outputs among {sorted(predictions)}")
    feats = [np.asarray(predictions[k], np.float64).reshape(len(predictions[k]), -1) for k in keys]
    return np.concatenate(feats, axis=1), keys


def _mean_precision(features: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    centred = features - mean
    cov = centred.T @ centred / max(1, len(features) - 1)
    # Shrink towards the scaled identity: a stable inverse with fewer samples than dimensions.
    target = np.eye(len(mean)) * max(np.trace(cov) / len(mean), 1e-12)
    return mean, np.linalg.pinv((1 - shrinkage) * cov + shrinkage * target)


def fit(
    features: np.ndarray,
    keys: list[str],
    quantile: float = 0.99,
    shrinkage: float = 0.1,
    folds: int = 5,
) -> dict:
    """Training-set mean and shrunk precision matrix, and the distance threshold at
    ``quantile`` of held-out distances (``folds``-fold: each image scored by statistics fitted
    without it, since in-sample distances are biased low and would flag unseen images)."""
    mean, precision = _mean_precision(features, shrinkage)
    held_out = np.empty(len(features))
    fold_of = np.arange(len(features)) % max(2, min(folds, len(features)))
    for k in np.unique(fold_of):
        m, p = _mean_precision(features[fold_of != k], shrinkage)
        held_out[fold_of == k] = score({"mean": m, "precision": p}, features[fold_of == k])
    return {
        "keys": keys,
        "mean": mean.tolist(),
        "precision": precision.tolist(),
        "quantile": quantile,
        "threshold": float(np.quantile(held_out, quantile)),
        "num_samples": len(features),
    }


def score(stats: dict, features: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of ``features`` to the training statistics."""
    centred = np.asarray(features, np.float64) - np.asarray(stats["mean"])
    precision = np.asarray(stats["precision"])
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, precision, centred), 0.0))


def write_stats(folder: str, stats: dict) -> str:
    path = os.path.join(folder, OOD_FILE)
    with open(path, "w") as f:
        json.dump(stats, f)
    return path


def read_stats(folder: str | None) -> dict | None:
    """The statistics an export holds (None for workdirs and older exports)."""
    path = os.path.join(folder, OOD_FILE) if folder else ""
    if not folder or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); re-export the model") from None


def image_problem(path: str) -> str | None:
    """Why an image cannot be what a model was trained on (too small), or None."""
    w, h = images.image_size(path)
    if min(w, h) < MIN_SIDE:
        return f"image is {w}x{h} pixels (< {MIN_SIDE}): not a medical image"
    return None


def flags(
    paths: Sequence[str], preds: dict[str, np.ndarray], stats: dict | None
) -> dict[str, np.ndarray]:
    """``in_distribution`` (and ``ood_score`` with statistics) per image, and ``ood_reason``."""
    reasons = [image_problem(p) or "" for p in paths]
    out = {}
    if stats is not None:
        features, _ = feature_matrix({k: preds[k] for k in stats["keys"]})
        scores = score(stats, features)
        out["ood_score"] = scores
        reasons = [
            r
            or (
                f"ood_score {s:.2f} > threshold {stats['threshold']:.2f}"
                if s > stats["threshold"]
                else ""
            )
            for r, s in zip(reasons, scores, strict=True)
        ]
    out["in_distribution"] = np.array([not r for r in reasons])
    out["ood_reason"] = np.array(reasons, dtype=object)
    return out

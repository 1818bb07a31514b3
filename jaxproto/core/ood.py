"""Foreign input is flagged, not diagnosed: image sanity and a feature-space out-of-distribution
score (Mahalanobis distance to training-set statistics stored in the export).

Image sanity: an image too small to be a medical image, or a DICOM whose Modality (0008,0060)
or BodyPartExamined (0018,0015) is not among those of the training set (``imaging`` in
``ood.json``: the config's ``data.modality``/``data.body_part``, else the training DICOMs'
headers, else the dataset's own codes, ``data.registry.IMAGING``), is flagged.

Features are the method's pooled backbone features (``outputs.FEATURES``) when its ``predict``
returns them, else its other per-image float outputs (logits, embeddings, concept logits)
concatenated -- the Mahalanobis score of a classifier's logits is the weaker, method-independent
variant (old exports' statistics name their ``keys``, so they keep scoring what they were
fitted on). The threshold is a quantile (default 0.99) of held-out training-set distances.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from jaxproto.common.errors import CheckpointError
from jaxproto.core import outputs
from jaxproto.data import images, registry
from jaxproto.data.records import Record

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
    """The statistics an export holds (None for workdirs and older exports; only ``imaging``
    when the training data was not readable at export time)."""
    path = os.path.join(folder, OOD_FILE) if folder else ""
    if not folder or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); re-export the model") from None


DICOM_TAGS = {"modality": "Modality (0008,0060)", "body_part": "BodyPartExamined (0018,0015)"}


def training_imaging(data_cfg, records: Sequence[Record]) -> dict:
    """What the training images are, per DICOM tag (``modality``, ``body_part``): the config's
    codes where it names them, else those in the headers of the training DICOMs among
    ``records``, else the dataset's own (``data.registry.imaging``); ``source`` says which."""
    declared = registry.imaging(data_cfg)
    seen: dict[str, set[str]] = {key: set() for key in DICOM_TAGS}
    for r in records:
        for key, value in images.dicom_tags(r.path).items():
            seen[key].add(value)
    out: dict = {"source": {}}
    for key in DICOM_TAGS:
        if str(data_cfg.get(key, "") or "").strip():
            out[key], out["source"][key] = declared[key], "config"
        elif seen[key]:
            out[key], out["source"][key] = sorted(seen[key]), "training DICOM headers"
        else:
            out[key], out["source"][key] = declared[key], f"dataset {data_cfg.get('name')!r}"
    return out


def stats_for(folder: str | None, config) -> dict:
    """What ``flags`` checks for a workdir or export: its ``ood.json`` (exports), and what the
    training images are -- from ``ood.json``, else (workdirs, older exports) the config's
    dataset (``training_imaging`` without headers)."""
    stats = dict(read_stats(folder) or {})
    stats.setdefault("imaging", training_imaging(config.data, []))
    return stats


def image_problem(path: str, imaging: dict | None = None) -> str | None:
    """Why an image cannot be what a model was trained on (too small; a DICOM of another
    modality or body part than ``imaging``, see ``training_imaging``), or None."""
    w, h = images.image_size(path)
    if min(w, h) < MIN_SIDE:
        return f"image is {w}x{h} pixels (< {MIN_SIDE}): not a medical image"
    tags = images.dicom_tags(path)
    for key, tag in DICOM_TAGS.items():
        allowed = (imaging or {}).get(key) or []
        if key in tags and allowed and tags[key] not in allowed:
            return (
                f"DICOM {tag} is {tags[key]!r}, but the model was trained on "
                f"{', '.join(allowed)} images"
            )
    return None


def flags(
    paths: Sequence[str], preds: dict[str, np.ndarray], stats: dict | None
) -> dict[str, np.ndarray]:
    """``in_distribution`` (and ``ood_score`` with feature statistics) per image, and
    ``ood_reason``."""
    imaging = (stats or {}).get("imaging")
    reasons = [image_problem(p, imaging) or "" for p in paths]
    out = {}
    if stats is not None and "keys" in stats:
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

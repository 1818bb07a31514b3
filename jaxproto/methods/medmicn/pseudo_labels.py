"""The paper's VLM concept labeller as a pluggable interface (specs/medmicn.md §5.3-4).

Med-MICN labels concepts with BioViL: image feature map V (H×W×D) and text embeddings t_i give
the cosine map P_hwi = t_i·V_hw / (‖t_i‖‖V_hw‖), mean-pooled to s_i and thresholded, c_i =
1[s_i > τ]; concepts whose mean similarity over all images is below 0.45 are dropped. The code
releases neither the encoders nor τ, and this package downloads nothing: callers pass their own
``ImageEncoder`` and ``TextEncoder`` (e.g. a locally stored BioViL) and τ. The labels are written
in the concept-table schema the loaders read (``image`` + one 0/1 column per concept).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence

import numpy as np

ImageEncoder = Callable[[np.ndarray], np.ndarray]  # (B, H, W, 3) uint8 -> (B, h, w, D)
TextEncoder = Callable[[Sequence[str]], np.ndarray]  # N texts -> (N, D)


def cosine_maps(feature_maps: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """P (B, h, w, N): cosine similarity of every feature-map cell with every text embedding."""
    v = np.asarray(feature_maps, np.float64)
    t = np.asarray(text_embeddings, np.float64)
    if v.ndim != 4 or t.ndim != 2 or v.shape[-1] != t.shape[-1]:
        raise ValueError(f"feature maps {v.shape} and text embeddings {t.shape} do not match")
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-12)
    return np.einsum("bhwd,nd->bhwn", v, t)


def concept_scores(
    images: np.ndarray, concepts: Sequence[str], image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
) -> np.ndarray:  # fmt: skip
    """s (B, N): the mean over cells of the cosine map of each concept's text."""
    return cosine_maps(image_encoder(images), text_encoder(list(concepts))).mean(axis=(1, 2))


def threshold(scores: np.ndarray, tau: float) -> np.ndarray:
    """c = 1[s > τ] as float32 0/1."""
    return (np.asarray(scores) > tau).astype(np.float32)


def keep_concepts(scores: np.ndarray, min_mean: float = 0.45) -> np.ndarray:
    """Indices of the concepts whose mean similarity over all images reaches ``min_mean``."""
    return np.flatnonzero(np.asarray(scores).mean(axis=0) >= min_mean)


def write_concept_table(
    path: str, keys: Sequence[str], concepts: Sequence[str], labels: np.ndarray,
    key_column: str = "image",
) -> str:  # fmt: skip
    """Writes the concept CSV the loaders read (``data.*_concept_csv``)."""
    labels = np.asarray(labels)
    if labels.shape != (len(keys), len(concepts)):
        raise ValueError(f"labels {labels.shape} for {len(keys)} images, {len(concepts)} concepts")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([key_column, *concepts])
        for key, row in zip(keys, labels, strict=True):
            w.writerow([key, *[int(v) for v in row]])
    return path

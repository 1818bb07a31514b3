"""Epoch samplers: which records (or tuples of records) each training epoch visits.

Every sampler is a pure function of ``(seed, epoch)``: ``epoch(e)`` always returns the same array,
so a resumed run (see ``pipeline.make_train_stream``) replays exactly the same example stream.
Implements the ``jaxproto.core.method.Sampler`` protocol (``__len__`` and ``epoch``).
"""

from __future__ import annotations

import numpy as np


def _rng(seed: int, epoch: int, salt: int = 0) -> np.random.Generator:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return np.random.default_rng([int(seed), int(epoch), salt])


class ShuffleSampler:
    """A fresh random permutation of all records every epoch."""

    def __init__(self, num_records: int, seed: int):
        if num_records <= 0:
            raise ValueError(f"ShuffleSampler needs num_records > 0, got {num_records}")
        self.num_records = int(num_records)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_records

    def epoch(self, epoch: int) -> np.ndarray:
        return _rng(self.seed, epoch).permutation(self.num_records)


class WeightedSampler:
    """``num_samples`` draws with replacement, record i with probability weights[i] / sum
    (PyTorch ``WeightedRandomSampler(replacement=True)`` semantics, cipl.md §3.3)."""

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int):
        w = np.asarray(weights, np.float64)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"weights must be a non-empty 1-D array, got shape {w.shape}")
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ValueError(
                f"weights must be finite and >= 0; record {bad[0]} has weight {w[bad[0]]}"
            )
        if w.sum() <= 0:
            raise ValueError("weights sum to 0: no record can be drawn")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples}")
        self.probs = w / w.sum()
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def epoch(self, epoch: int) -> np.ndarray:
        rng = _rng(self.seed, epoch)
        return rng.choice(self.probs.size, size=self.num_samples, replace=True, p=self.probs)

"""Epoch samplers: which records (or tuples of records) each training epoch visits.

Every sampler is a pure function of ``(seed, epoch)``: ``epoch(e)`` always returns the same array,
so a resumed run (see ``pipeline.make_train_stream``) replays exactly the same example stream.
Implements the ``jaxproto.core.method.Sampler`` protocol (``__len__`` and ``epoch``).
"""

from __future__ import annotations

import numpy as np

from jaxproto.common.errors import DataError


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


def _check_multi_hot(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D multi-hot array [N, C], got shape {y.shape}")
    y = y > 0.5
    empty = np.flatnonzero(~y.any(axis=1))
    if empty.size:
        raise DataError(
            f"record {empty[0]} (and {empty.size - 1} more) has no positive label; every image "
            "needs at least one (the background class counts)"
        )
    return y


def inverse_frequency_class_weights(labels: np.ndarray) -> np.ndarray:
    """Raw CIPL class weights (cipl.md §3.3): total positives / positives of each class.

    Classes without positives get weight 0 (they can never be drawn anyway)."""
    y = _check_multi_hot(labels)
    counts = y.sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore"):
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    return w.astype(np.float32)


def cipl_image_weights(labels: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Image weight = mean of the class weights over the image's positive labels (cipl.md §3.3;
    the background/No-Finding class counts as a label)."""
    y = _check_multi_hot(labels)
    cw = np.asarray(class_weights, np.float64)
    if cw.shape != (y.shape[1],):
        raise ValueError(f"class_weights must have shape ({y.shape[1]},), got {cw.shape}")
    return ((y * cw).sum(axis=1) / y.sum(axis=1)).astype(np.float32)


class PairSampler:
    """CIPL image pairs (cipl.md §3.4 "Pair sampling"): image a from the inner sampler (weighted
    if ``weights`` is given, else a shuffle), one of a's positive labels uniformly, then b
    uniformly among all images with that label (b may equal a). Rows are (a, b)."""

    def __init__(self, labels: np.ndarray, seed: int, weights: np.ndarray | None = None):
        self.labels = _check_multi_hot(labels)
        n = self.labels.shape[0]
        self.seed = int(seed)
        self.inner = (
            ShuffleSampler(n, seed) if weights is None else WeightedSampler(weights, n, seed)
        )
        self.members = [np.flatnonzero(self.labels[:, c]) for c in range(self.labels.shape[1])]

    def __len__(self) -> int:
        return len(self.inner)

    def epoch(self, epoch: int) -> np.ndarray:
        a = self.inner.epoch(epoch)
        rng = _rng(self.seed, epoch, salt=1)
        # argmax of uniform noise restricted to positives = a uniform pick among them.
        noise = np.where(self.labels[a], rng.random(self.labels[a].shape), -1.0)
        chosen = noise.argmax(axis=1)
        u = rng.random(a.size)
        b = np.empty_like(a)
        for c in np.unique(chosen):
            rows = np.flatnonzero(chosen == c)
            m = self.members[c]
            b[rows] = m[np.minimum((u[rows] * m.size).astype(np.int64), m.size - 1)]
        return np.stack([a, b], axis=1)


class PKSampler:
    """X-MIR's P×K batches (xmir.md §2.2), flattened: each block of P·K entries is one batch of
    P distinct labels (random order) times K images each.

    Groups with fewer than K images are dropped; every epoch each group is reshuffled; batches
    are drawn while at least P groups have >= K unused images. When P equals the number of
    groups (every X-MIR setting) the epoch length is fixed (min group size // K batches);
    otherwise it can vary between epochs and ``len`` is epoch 0's length.
    """

    def __init__(self, labels: np.ndarray, P: int, K: int, seed: int):
        y = np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"PKSampler needs 1-D integer labels, got {y.dtype} {y.shape}")
        if P <= 0 or K <= 0:
            raise ValueError(f"P and K must be > 0, got P={P}, K={K}")
        self.P, self.K, self.seed = int(P), int(K), int(seed)
        groups = [np.flatnonzero(y == c) for c in np.unique(y)]
        self.groups = [g for g in groups if g.size >= self.K]
        if len(self.groups) < self.P:
            raise DataError(
                f"PKSampler: only {len(self.groups)} labels have >= K={self.K} images, "
                f"need P={self.P}"
            )
        self._len = self.epoch(0).size

    def __len__(self) -> int:
        return self._len

    def epoch(self, epoch: int) -> np.ndarray:
        rng = _rng(self.seed, epoch)
        groups = [rng.permutation(g) for g in self.groups]
        cursor = np.zeros(len(groups), np.int64)
        sizes = np.array([g.size for g in groups])
        out = []
        while True:
            alive = np.flatnonzero(sizes - cursor >= self.K)
            if alive.size < self.P:
                break
            for g in rng.choice(alive, size=self.P, replace=False):
                out.append(groups[g][cursor[g] : cursor[g] + self.K])
                cursor[g] += self.K
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

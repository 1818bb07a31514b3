"""grain input pipelines: a checkpointable, infinite training stream and ordered eval batches.

Training stream semantics (independent of worker and process count, so a run on P processes
sees exactly the global batches of a 1-process run):

* the example stream is ``sampler.epoch(0)`` followed by ``sampler.epoch(1)``, ...;
* global batch i is stream positions ``[i*B, (i+1)*B)``; process p decodes only its contiguous
  slice ``[i*B + p*B/P, i*B + (p+1)*B/P)`` (lazy ``MapDataset.map`` before ``batch``);
* the augmentation rng of stream position s is ``np.random.default_rng([seed, s])``.

The iterator is a grain ``DatasetIterator`` (``get_state``/``set_state``), so it can be saved
with orbax through ``grain.checkpoint.CheckpointSave``.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from jaxproto.data.records import Record


class Sampler(Protocol):
    """Decides which records (or tuples of records) an epoch visits, deterministically."""

    def __len__(self) -> int:
        """Examples per epoch."""
        ...

    def epoch(self, epoch: int) -> np.ndarray:
        """Record indices for ``epoch``: shape (len,) or (len, k) for k-tuples (pairs)."""
        ...


ExampleFn = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
"""Turns one sampler entry (a record index, or a row of indices) into one example dict of
numpy arrays with fixed shapes (decode + augment); must be picklable for worker processes."""


# Long enough to never run out (2**61 / batch size batches); grain indexes it lazily.
_STREAM_LENGTH = sys.maxsize // 4


def stack_examples(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks a list of example dicts (same keys, same shapes) into one batch dict."""
    if not examples:
        raise ValueError("stack_examples needs at least one example")
    keys = examples[0].keys()
    for i, ex in enumerate(examples):
        if ex.keys() != keys:
            raise ValueError(
                f"example {i} has keys {sorted(ex)}, expected {sorted(keys)} like example 0"
            )
    out = {}
    for k in keys:
        values = [np.asarray(ex[k]) for ex in examples]
        shapes = {v.shape for v in values}
        if len(shapes) != 1:
            raise ValueError(f"field {k!r} has differing shapes across examples: {sorted(shapes)}")
        out[k] = np.stack(values)
    return out


def _check_split(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}"
        )
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    return global_batch_size // process_count


class _StreamExample:
    """Maps a local example number to (sampler entry, rng) at its global stream position.

    Picklable (sampler + example function), so it runs in grain worker processes.
    """

    def __init__(
        self, sampler: Sampler, example_fn: ExampleFn, seed: int, batch: int, local: int, p: int
    ):
        self.sampler, self.example_fn, self.seed = sampler, example_fn, int(seed)
        self.batch, self.local, self.p = batch, local, p
        self._reset()

    def _reset(self) -> None:
        self._starts = [0]  # stream position where each computed epoch starts
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # grain maps from several reader threads

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_starts", "_cache", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            entries = np.asarray(self.sampler.epoch(e))
            if len(entries) == 0:
                raise ValueError(f"sampler {self.sampler!r} returned an empty epoch {e}")
            self._cache[e] = entries
        return self._cache[e]

    def _locate(self, position: int) -> tuple[int, int]:
        # Epoch lengths may differ (PKSampler with P < #labels): walk cumulative lengths once.
        while self._starts[-1] <= position:
            e = len(self._starts) - 1
            self._starts.append(self._starts[-1] + len(self._epoch(e)))
        e = bisect.bisect_right(self._starts, position) - 1
        return e, position - self._starts[e]

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        i, j = divmod(int(k), self.local)
        position = i * self.batch + self.p * self.local + j
        with self._lock:
            e, offset = self._locate(position)
            entry = self._epoch(e)[offset]
        return self.example_fn(entry, np.random.default_rng([self.seed, position]))


def _read_options() -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def make_train_stream(
    sampler: Sampler,
    example_fn: ExampleFn,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """Infinite iterator of this process's LOCAL batches (dict of numpy arrays with leading
    dim ``global_batch_size // process_count``); see the module docstring for the semantics.

    ``example_fn`` must be a picklable top-level callable when ``worker_count > 0``.
    """
    local = _check_split(global_batch_size, process_index, process_count)
    if len(sampler) <= 0:
        raise ValueError(f"sampler {sampler!r} has no examples")
    fn = _StreamExample(sampler, example_fn, seed, global_batch_size, local, process_index)
    ds = grain.MapDataset.range(0, _STREAM_LENGTH).map(fn).batch(local, batch_fn=stack_examples)
    it_ds = ds.to_iter_dataset(_read_options())
    if worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)


class _EvalExample:
    """Local row number -> (global record index, example, valid) with last-record padding."""

    def __init__(
        self, records: Sequence[Record], example_fn: Callable, batch: int, local: int, p: int
    ):
        self.records, self.example_fn = records, example_fn
        self.batch, self.local, self.p = batch, local, p

    def __call__(self, k: int) -> tuple[int, dict[str, np.ndarray], bool]:
        i, j = divmod(int(k), self.local)
        g = i * self.batch + self.p * self.local + j
        n = len(self.records)
        idx = min(g, n - 1)
        return idx, self.example_fn(self.records[idx]), g < n


def _stack_eval(rows: Sequence[tuple[int, dict, bool]]) -> tuple[np.ndarray, dict, np.ndarray]:
    idx = np.array([r[0] for r in rows], np.int64)
    valid = np.array([r[2] for r in rows], bool)
    return idx, stack_examples([r[1] for r in rows]), valid


def make_eval_batches(
    records: Sequence[Record],
    example_fn: Callable[[Record], dict],
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> Iterator[tuple[np.ndarray, dict, np.ndarray]]:
    """Yields ``(global record indices, local batch, valid mask)`` over ``records`` in order.

    ``batch_size`` is global; each process gets ``batch_size // process_count`` rows, process p
    the contiguous block p of each global batch. The last global batch is padded to full size
    by repeating the last record (``valid`` False there), so every batch has the same shape
    and every process yields the same number of batches.
    """
    local = _check_split(batch_size, process_index, process_count)
    if not records:
        raise ValueError("make_eval_batches needs at least one record")
    num_batches = -(-len(records) // batch_size)
    fn = _EvalExample(records, example_fn, batch_size, local, process_index)
    ds = grain.MapDataset.range(0, num_batches * local).map(fn).batch(local, batch_fn=_stack_eval)
    it_ds = ds.to_iter_dataset(_read_options())
    if worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)

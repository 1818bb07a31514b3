"""grain input pipelines: a checkpointable, infinite training stream and ordered eval batches.

Training stream semantics (independent of worker and process count, so a run on P processes
sees exactly the global batches of a 1-process run):

* the example stream is ``sampler.epoch(0)`` followed by ``sampler.epoch(1)``, ...;
* global batch i is stream positions ``[i*B, (i+1)*B)``; process p decodes only its contiguous
  slice ``[i*B + p*B/P, i*B + (p+1)*B/P)`` (lazy ``MapDataset.map`` before ``batch``);
* the augmentation rng of stream position s is ``np.random.default_rng([seed, s])``;
* a stream may start at global batch ``start_batch`` (a phase that continues the stream of the
  phase before it, e.g. one epoch of a stage split into per-epoch phases).

Bad images (``images.ImageError``: missing, truncated, corrupt) found while decoding: with
``data.on_bad_sample=error`` the stream raises a DataError naming the file and the line that
listed the record; with ``skip`` the example at position s is replaced by the example of the
next position s+1, s+2, ... (at most ``MAX_REPLACEMENTS``) whose images decode, built with
position s's rng. Batches stay full and the stream stays a pure function of (sampler, seed, the
set of bad images), whatever the process and worker layout. Each bad record is reported once to
the ``BadSampleReport`` (``data_report.json``, stage ``"decode"``) by the main process.
Evaluation cannot skip a record (its metrics need every one): there a bad image always raises.

The iterator is a grain ``DatasetIterator`` (``get_state``/``set_state``), so it can be saved
with orbax through ``grain.checkpoint.CheckpointSave``; ``Prefetch`` keeps batches placed on the
devices ahead of the step and stays checkpointable. ``worker_count=-1`` (``AUTO_WORKERS``) sizes
the decode worker processes to the host (``host_worker_count``).
"""

from __future__ import annotations

import bisect
import collections
import copy
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from jaxproto.common.errors import DataError
from jaxproto.data.images import ImageError
from jaxproto.data.records import BadSampleReport, Record


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
MAX_REPLACEMENTS = 64  # consecutive undecodable stream positions before the stream gives up


class _Sources:
    """Image path -> the ``file:line`` that listed its record, for bad-image messages."""

    def __init__(self, records: Sequence[Record] | None):
        self.where = {r.path: r.meta["where"] for r in records or () if r.meta.get("where")}

    def describe(self, err: ImageError) -> tuple[str, str]:
        """(where: the image and the line that listed it, problem) of a bad image."""
        src = self.where.get(err.path)
        where = f"{err.path} (listed at {src})" if src else err.path
        return where, str(err).removeprefix(f"{err.path}: ")

    def report(self, err: ImageError, report: BadSampleReport) -> None:
        """Hands ``err`` to ``report`` as a decode-stage bad sample of its record."""
        where, problem = self.describe(err)
        report.bad(where, problem, "an image file that decodes", stage="decode")


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
        self,
        sampler: Sampler,
        example_fn: ExampleFn,
        seed: int,
        layout: tuple[int, int, int],
        sources: _Sources,
        policy: str,
    ):
        self.sampler, self.example_fn, self.seed = sampler, example_fn, int(seed)
        self.batch, self.local, self.p = layout
        self.sources, self.policy = sources, policy
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

    def _entry(self, position: int) -> np.ndarray:
        with self._lock:
            e, offset = self._locate(position)
            return self._epoch(e)[offset]

    def __call__(self, k: int) -> tuple[dict[str, np.ndarray], list[dict]]:
        """(example, bad samples replaced on the way) for local example number ``k``."""
        i, j = divmod(int(k), self.local)
        position = i * self.batch + self.p * self.local + j
        skipped = BadSampleReport(self.policy)  # raises under "error"
        for candidate in range(position, position + MAX_REPLACEMENTS + 1):
            rng = np.random.default_rng([self.seed, position])
            try:
                return self.example_fn(self._entry(candidate), rng), skipped.entries
            except ImageError as err:
                self.sources.report(err, skipped)
        raise DataError(
            f"{MAX_REPLACEMENTS + 1} consecutive training examples from stream position "
            f"{position} have images that cannot be decoded (last: "
            f"{skipped.entries[-1]['where']}); fix or remove the files"
        )


def _stack_with_skips(rows: Sequence[tuple[dict, list[dict]]]) -> tuple[dict, list[dict]]:
    return stack_examples([r[0] for r in rows]), [e for r in rows for e in r[1]]


class _ReportSkips:
    """Main-process end of the stream: bad samples replaced in workers go to the report."""

    def __init__(self, report: BadSampleReport | None):
        self.report = report

    def __call__(self, item: tuple[dict, list[dict]]) -> dict[str, np.ndarray]:
        batch, skipped = item
        for e in skipped:
            self.report.bad(e["where"], e["problem"], e["expected"], stage="decode")
        return batch


def _read_options() -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


AUTO_WORKERS = -1
MAX_AUTO_WORKERS = 16


def host_worker_count(processes_per_host: int = 1) -> int:
    """Decode worker processes per training process for this host: the CPUs this process may
    use, shared by ``processes_per_host`` training processes, less one for the process itself
    (training loop, device feeding), at most ``MAX_AUTO_WORKERS``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(MAX_AUTO_WORKERS, (cpus or 1) // max(1, processes_per_host) - 1))


def resolve_worker_count(worker_count: int, processes_per_host: int = 1) -> int:
    """``worker_count`` itself, or ``host_worker_count`` for ``AUTO_WORKERS`` (-1)."""
    if worker_count == AUTO_WORKERS:
        return host_worker_count(processes_per_host)
    if worker_count < 0:
        raise ValueError(f"train.worker_count must be >= 0 or -1 (auto), got {worker_count}")
    return int(worker_count)


def _prefetched(it_ds: grain.IterDataset, worker_count: int) -> grain.IterDataset:
    workers = resolve_worker_count(worker_count)
    if workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it_ds


class Prefetch(grain.DatasetIterator):
    """Wraps a stream so batches are placed (``place``, e.g. the host -> device copy, which JAX
    dispatches asynchronously) ``size - 1`` batches ahead of the one handed out, as flax's
    ``prefetch_to_device``: the copy of batch i+1 overlaps step i.

    ``get_state`` is the wrapped stream's state just after the last batch handed out, so a
    checkpoint taken between steps resumes at the next unseen batch; ``set_state`` drops the
    batches placed ahead."""

    def __init__(self, parent: grain.DatasetIterator, place: Callable[[Any], Any], size: int = 2):
        super().__init__(parent)
        if size < 1:
            raise ValueError(f"Prefetch size must be >= 1, got {size}")
        self._place, self._size = place, size
        self._queue: collections.deque = collections.deque()
        self._state = parent.get_state()

    def __next__(self):
        while len(self._queue) < self._size:
            batch = next(self._parent)
            self._queue.append((self._place(batch), self._parent.get_state()))
        batch, self._state = self._queue.popleft()
        return batch

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        self._queue.clear()
        self._parent.set_state(state)
        self._state = self._parent.get_state()


def make_train_stream(
    sampler: Sampler,
    example_fn: ExampleFn,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    records: Sequence[Record] | None = None,
    report: BadSampleReport | None = None,
    start_batch: int = 0,
) -> grain.DatasetIterator:
    """Infinite iterator of this process's LOCAL batches (dict of numpy arrays with leading
    dim ``global_batch_size // process_count``); see the module docstring for the semantics.

    ``records`` (the ones the sampler indexes) name the source line of a bad image; ``report``
    sets the bad-sample policy (``error`` without one) and receives the skipped records.
    ``example_fn`` must be a picklable top-level callable when ``worker_count > 0``.
    """
    local = _check_split(global_batch_size, process_index, process_count)
    if len(sampler) <= 0:
        raise ValueError(f"sampler {sampler!r} has no examples")
    fn = _StreamExample(
        sampler,
        example_fn,
        seed,
        (global_batch_size, local, process_index),
        _Sources(records),
        report.policy if report is not None else "error",
    )
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    ds = grain.MapDataset.range(start_batch * local, _STREAM_LENGTH).map(fn)
    it_ds = ds.batch(local, batch_fn=_stack_with_skips).to_iter_dataset(_read_options())
    return iter(_prefetched(it_ds, worker_count).map(_ReportSkips(report)))


class _EvalExample:
    """Local row number -> (global record index, example, valid) with last-record padding."""

    def __init__(
        self, records: Sequence[Record], example_fn: Callable, batch: int, local: int, p: int
    ):
        self.records, self.example_fn = records, example_fn
        self.batch, self.local, self.p = batch, local, p
        self.sources = _Sources(records)

    def __call__(self, k: int) -> tuple[int, dict[str, np.ndarray], bool]:
        i, j = divmod(int(k), self.local)
        g = i * self.batch + self.p * self.local + j
        n = len(self.records)
        idx = min(g, n - 1)
        try:
            return idx, self.example_fn(self.records[idx]), g < n
        except ImageError as err:
            where, problem = self.sources.describe(err)
            raise DataError(
                f"{where}: {problem}; evaluation needs every record: fix or remove the file"
            ) from err


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
    return iter(_prefetched(ds.to_iter_dataset(_read_options()), worker_count))

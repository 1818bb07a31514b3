"""grain pipeline semantics: stream order, rngs, process slicing, resume, eval padding."""

import os

import numpy as np
import pytest

from jaxproto.data.pipeline import (
    AUTO_WORKERS,
    MAX_AUTO_WORKERS,
    Prefetch,
    host_worker_count,
    make_eval_batches,
    make_train_stream,
    resolve_worker_count,
    stack_examples,
)
from jaxproto.data.records import Record
from jaxproto.data.samplers import ShuffleSampler


def toy_example(entry, rng):
    """Top-level (picklable) example function: the entry and one draw of its rng."""
    return {"entry": np.asarray(entry, np.int64), "r": np.float64(rng.random())}


class VariableSampler:
    """Epoch e visits range(3 + e % 2) reversed: epochs of different lengths."""

    def __len__(self):
        return 3

    def epoch(self, e):
        return np.arange(3 + e % 2)[::-1]


class PairsSampler:
    """Epoch e visits seeded random pairs of record indices: (len, 2) entries, like CIPL's."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def epoch(self, e):
        return np.random.default_rng([3, e]).integers(0, self.n, size=(self.n, 2))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _reference_stream(sampler, seed, n):
    entries = np.concatenate([sampler.epoch(e) for e in range(n // len(sampler) + 2)])[:n]
    r = np.array([np.random.default_rng([seed, s]).random() for s in range(n)])
    return entries, r


def test_stream_is_concatenated_epochs_with_position_rngs():
    sampler = ShuffleSampler(10, seed=1)
    it = make_train_stream(sampler, toy_example, global_batch_size=4, seed=7)
    batches = _take(it, 7)  # 28 examples: crosses two epoch boundaries
    entries, r = _reference_stream(sampler, 7, 28)
    np.testing.assert_array_equal(np.concatenate([b["entry"] for b in batches]), entries)
    np.testing.assert_allclose(np.concatenate([b["r"] for b in batches]), r)
    assert batches[0]["entry"].shape == (4,)


def test_stream_started_at_a_batch_continues_the_reference_stream():
    sampler = ShuffleSampler(10, seed=1)
    it = make_train_stream(sampler, toy_example, global_batch_size=4, seed=7, start_batch=3)
    batches = _take(it, 4)  # positions 12..27: the second and third epochs
    entries, r = _reference_stream(sampler, 7, 28)
    np.testing.assert_array_equal(np.concatenate([b["entry"] for b in batches]), entries[12:])
    np.testing.assert_allclose(np.concatenate([b["r"] for b in batches]), r[12:])


def test_same_seed_same_batches_other_seed_other_rngs():
    sampler = ShuffleSampler(9, seed=0)
    a = _take(make_train_stream(sampler, toy_example, global_batch_size=3, seed=1), 4)
    b = _take(make_train_stream(sampler, toy_example, global_batch_size=3, seed=1), 4)
    c = _take(make_train_stream(sampler, toy_example, global_batch_size=3, seed=2), 4)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x["entry"], y["entry"])
        np.testing.assert_array_equal(x["r"], y["r"])
        np.testing.assert_array_equal(x["entry"], z["entry"])
        assert not np.array_equal(x["r"], z["r"])


def test_two_processes_concatenate_to_one_process():
    sampler = PairsSampler(6)
    one = _take(make_train_stream(sampler, toy_example, global_batch_size=4, seed=5), 5)
    parts = [
        _take(
            make_train_stream(
                sampler, toy_example, global_batch_size=4, seed=5, process_index=p,
                process_count=2,
            ),
            5,
        )
        for p in range(2)
    ]  # fmt: skip
    for i in range(5):
        assert parts[0][i]["entry"].shape == (2, 2)
        for k in ("entry", "r"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][i][k], parts[1][i][k]]), one[i][k]
            )


def test_variable_length_epochs():
    sampler = VariableSampler()
    batches = _take(make_train_stream(sampler, toy_example, global_batch_size=5, seed=0), 4)
    ref = np.concatenate([sampler.epoch(e) for e in range(7)])[:20]
    np.testing.assert_array_equal(np.concatenate([b["entry"] for b in batches]), ref)


def test_resume_from_state_mid_epoch():
    sampler = ShuffleSampler(11, seed=2)
    it = make_train_stream(sampler, toy_example, global_batch_size=3, seed=4)
    _take(it, 2)
    state = it.get_state()
    rest = _take(it, 6)
    it2 = make_train_stream(sampler, toy_example, global_batch_size=3, seed=4)
    it2.set_state(state)
    for x, y in zip(rest, _take(it2, 6), strict=True):
        np.testing.assert_array_equal(x["entry"], y["entry"])
        np.testing.assert_array_equal(x["r"], y["r"])


def test_orbax_checkpoint_roundtrip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    sampler = ShuffleSampler(7, seed=0)
    it = make_train_stream(sampler, toy_example, global_batch_size=2, seed=1)
    _take(it, 3)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data_iter",))
    mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = _take(it, 3)
    it2 = make_train_stream(sampler, toy_example, global_batch_size=2, seed=1)
    mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(it2)))
    mngr.close()
    for x, y in zip(expected, _take(it2, 3), strict=True):
        np.testing.assert_array_equal(x["entry"], y["entry"])


@pytest.mark.slow
def test_resume_with_two_workers():
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    sampler = ShuffleSampler(13, seed=2)
    kw = dict(global_batch_size=4, seed=4, worker_count=2)
    it = make_train_stream(sampler, toy_example, **kw)
    first = _take(it, 3)
    state = it.get_state()
    rest = _take(it, 4)
    entries, r = _reference_stream(sampler, 4, 28)
    got = np.concatenate([b["entry"] for b in first + rest])
    np.testing.assert_array_equal(got, entries)
    np.testing.assert_allclose(np.concatenate([b["r"] for b in first + rest]), r)
    it2 = make_train_stream(sampler, toy_example, **kw)
    it2.set_state(state)
    for x, y in zip(rest, _take(it2, 4), strict=True):
        np.testing.assert_array_equal(x["entry"], y["entry"])


def test_batch_size_must_divide_processes():
    with pytest.raises(ValueError, match="multiple of the process count"):
        make_train_stream(ShuffleSampler(4, 0), toy_example, global_batch_size=3, seed=0,
                          process_count=2)  # fmt: skip


def _records(n):
    return [Record(f"r{i}", f"p{i}", np.zeros(2, np.float32), meta={"v": i}) for i in range(n)]


def eval_example(record):
    return {"v": np.array(record.meta["v"], np.int64)}


def test_eval_batches_cover_every_record_once_with_padding():
    recs = _records(11)
    out = list(make_eval_batches(recs, eval_example, 4))
    assert len(out) == 3
    idx = np.concatenate([o[0] for o in out])
    valid = np.concatenate([o[2] for o in out])
    vals = np.concatenate([o[1]["v"] for o in out])
    np.testing.assert_array_equal(idx[valid], np.arange(11))
    np.testing.assert_array_equal(vals, idx)
    assert valid.sum() == 11 and not valid[-1] and idx[-1] == 10  # padded with the last record
    assert all(o[1]["v"].shape == (4,) for o in out)


def test_eval_batches_process_split_matches_single_process():
    recs = _records(13)
    one = list(make_eval_batches(recs, eval_example, 6))
    parts = [
        list(make_eval_batches(recs, eval_example, 6, process_index=p, process_count=3))
        for p in range(3)
    ]
    assert all(len(p) == len(one) for p in parts)
    covered = []
    for i, (idx, batch, valid) in enumerate(one):
        np.testing.assert_array_equal(np.concatenate([p[i][0] for p in parts]), idx)
        np.testing.assert_array_equal(np.concatenate([p[i][2] for p in parts]), valid)
        np.testing.assert_array_equal(np.concatenate([p[i][1]["v"] for p in parts]), batch["v"])
        covered += list(idx[valid])
    assert sorted(covered) == list(range(13))


def test_stack_examples_checks_shapes_and_keys():
    out = stack_examples([{"a": np.zeros(2)}, {"a": np.ones(2)}])
    assert out["a"].shape == (2, 2)
    with pytest.raises(ValueError, match="differing shapes"):
        stack_examples([{"a": np.zeros(2)}, {"a": np.zeros(3)}])
    with pytest.raises(ValueError, match="keys"):
        stack_examples([{"a": 1}, {"b": 1}])


def test_prefetch_places_ahead_and_checkpoints_at_the_consumed_batch():
    sampler = ShuffleSampler(7, seed=2)

    def stream():
        return make_train_stream(sampler, toy_example, global_batch_size=3, seed=4)

    placed = []

    def place(batch):
        placed.append(batch)
        return {k: v * 10 for k, v in batch.items()}

    it = Prefetch(stream(), place, size=2)
    assert placed == []  # nothing is read before the first batch is asked for
    plain = stream()
    for _ in range(3):
        got, want = next(it), next(plain)
        np.testing.assert_array_equal(got["entry"], want["entry"] * 10)
    assert len(placed) == 4  # three handed out, one placed ahead
    state = it.get_state()
    assert state == plain.get_state()
    resumed = stream()
    resumed.set_state(state)
    fourth = next(plain)["entry"]
    np.testing.assert_array_equal(next(resumed)["entry"], fourth)
    it.set_state(state)  # drops what was placed ahead
    np.testing.assert_array_equal(next(it)["entry"], fourth * 10)
    with pytest.raises(ValueError, match="size must be >= 1"):
        Prefetch(stream(), place, size=0)


def test_worker_count_auto_is_sized_to_the_host(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert host_worker_count() == 11
    assert host_worker_count(processes_per_host=4) == 2
    assert resolve_worker_count(AUTO_WORKERS) == 11 and resolve_worker_count(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert host_worker_count() == MAX_AUTO_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert host_worker_count() == 0
    with pytest.raises(ValueError, match="worker_count must be >= 0 or -1"):
        resolve_worker_count(-2)

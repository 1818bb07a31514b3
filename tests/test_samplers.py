"""Samplers vs independent numpy references (frequencies, pair rule, PK structure)."""

import numpy as np
import pytest

from jaxproto.common.errors import DataError
from jaxproto.data.samplers import (
    PairSampler,
    PKSampler,
    ShuffleSampler,
    WeightedSampler,
    cipl_image_weights,
    inverse_frequency_class_weights,
)


def test_shuffle_is_a_permutation_deterministic_per_epoch():
    s = ShuffleSampler(50, seed=3)
    e0, e1 = s.epoch(0), s.epoch(1)
    assert len(s) == 50
    np.testing.assert_array_equal(np.sort(e0), np.arange(50))
    np.testing.assert_array_equal(e0, ShuffleSampler(50, seed=3).epoch(0))
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, ShuffleSampler(50, seed=4).epoch(0))


def test_weighted_frequencies_chi_square():
    w = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    s = WeightedSampler(w, num_samples=20000, seed=0)
    draws = s.epoch(0)
    assert draws.shape == (20000,)
    counts = np.bincount(draws, minlength=5)
    assert counts[4] == 0
    expected = 20000 * w[:4] / w.sum()
    chi2 = ((counts[:4] - expected) ** 2 / expected).sum()
    assert chi2 < 16.27  # df = 3, p = 0.001
    np.testing.assert_array_equal(draws, WeightedSampler(w, 20000, 0).epoch(0))


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [np.nan, 1.0], []])
def test_weighted_rejects_bad_weights(weights):
    with pytest.raises(ValueError):
        WeightedSampler(np.array(weights), 4, 0)


def test_cipl_weights_match_loop():
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 5)) < 0.3).astype(np.float32)
    labels[labels.sum(1) == 0, 4] = 1
    cw = rng.uniform(1, 10, 5)
    got = cipl_image_weights(labels, cw)
    for i in range(30):
        pos = [c for c in range(5) if labels[i, c] == 1]
        assert got[i] == pytest.approx(sum(cw[c] for c in pos) / len(pos), rel=1e-6)
    raw = inverse_frequency_class_weights(labels)
    total = labels.sum()
    for c in range(5):
        assert raw[c] == pytest.approx(total / labels[:, c].sum(), rel=1e-6)


def test_image_without_labels_is_a_data_error():
    with pytest.raises(DataError, match="record 1"):
        cipl_image_weights(np.array([[1, 0], [0, 0]]), np.ones(2))


def test_pair_sampler_rule_matches_reference_distribution():
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)
    s = PairSampler(labels, seed=1)
    rows = np.concatenate([s.epoch(e) for e in range(800)])
    assert rows.shape == (800 * 5, 2)
    a, b = rows[:, 0], rows[:, 1]
    assert ((labels[a] * labels[b]).sum(1) > 0).all()  # every pair shares a label
    # Reference P(b | a) = sum over positive c of a: (1/|pos(a)|) * [b has c] / |members(c)|.
    for i in range(5):
        pos = np.flatnonzero(labels[i])
        ref = np.zeros(5)
        for c in pos:
            members = np.flatnonzero(labels[:, c])
            ref[members] += 1.0 / len(pos) / len(members)
        got = np.bincount(b[a == i], minlength=5) / (a == i).sum()
        np.testing.assert_allclose(got, ref, atol=0.05)


def test_pair_sampler_with_weights_uses_weighted_first_image():
    labels = np.eye(3, dtype=np.float32)
    s = PairSampler(labels, seed=0, weights=np.array([1.0, 0.0, 3.0]))
    rows = np.concatenate([s.epoch(e) for e in range(500)])
    np.testing.assert_array_equal(rows[:, 0], rows[:, 1])  # one image per label
    freq = np.bincount(rows[:, 0], minlength=3) / rows.shape[0]
    np.testing.assert_allclose(freq, [0.25, 0.0, 0.75], atol=0.03)


def test_pk_sampler_structure_and_epoch_length():
    labels = np.array([0] * 50 + [1] * 40 + [2] * 17 + [3] * 3)  # class 3 < K: dropped
    s = PKSampler(labels, P=3, K=4, seed=0)
    e = s.epoch(0)
    assert len(s) == e.size == (17 // 4) * 12  # ends when the smallest group runs out
    assert len(np.unique(e)) == e.size
    for batch in e.reshape(-1, 12):
        blocks = labels[batch].reshape(3, 4)
        assert (blocks == blocks[:, :1]).all()
        assert sorted(blocks[:, 0]) == [0, 1, 2]
    np.testing.assert_array_equal(e, PKSampler(labels, 3, 4, seed=0).epoch(0))
    assert not np.array_equal(e, s.epoch(1))


def test_pk_sampler_fewer_labels_per_batch_than_groups():
    labels = np.repeat(np.arange(4), [12, 8, 8, 20])
    s = PKSampler(labels, P=2, K=4, seed=5)
    for ep in range(5):
        e = s.epoch(ep)
        assert len(np.unique(e)) == e.size
        for batch in e.reshape(-1, 8):
            blocks = labels[batch].reshape(2, 4)
            assert (blocks == blocks[:, :1]).all() and blocks[0, 0] != blocks[1, 0]
        # Stops when fewer than P groups have K left: at most one group keeps >= K images.
        left = np.bincount(labels, minlength=4) - np.bincount(labels[e], minlength=4)
        assert (left >= 4).sum() < 2
    assert len(s) == s.epoch(0).size


def test_pk_sampler_errors():
    with pytest.raises(DataError, match="need P=3"):
        PKSampler(np.array([0] * 5 + [1] * 5 + [2] * 2), P=3, K=4, seed=0)
    with pytest.raises(ValueError, match="integer"):
        PKSampler(np.zeros(5, np.float32), P=1, K=1, seed=0)

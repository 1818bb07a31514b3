"""Generic samplers vs independent numpy references (permutations, weighted frequencies)."""

import numpy as np
import pytest

from jaxproto.data.samplers import ShuffleSampler, WeightedSampler


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

"""Batch plans: pure functions of (seed, epoch), independent of how the epoch is split."""

import numpy as np
import pytest

from face_rec.data.samplers import BalancedBatches, RandomBatches


def _labels():
    # long-tailed: identity 0 has 60 images, the others 1 to 5
    return np.r_[np.zeros(60, int), np.repeat(np.arange(1, 21), np.arange(20) % 5 + 1)]


@pytest.mark.parametrize("plan", [RandomBatches, BalancedBatches])
def test_epoch_order_does_not_depend_on_the_batch_size(plan):
    """Batches of 8 x 4 ranks and of 32 x 1 rank see the same images in the same order."""
    labels = _labels()
    small = np.concatenate(plan(labels, 8, seed=3).batches(2))
    large = np.concatenate(plan(labels, 32, seed=3).batches(2))
    n = min(len(small), len(large))
    assert n >= 96
    np.testing.assert_array_equal(small[:n], large[:n])


def test_balanced_draws_identities_uniformly():
    labels = _labels()
    plan = BalancedBatches(labels, 16, seed=0)
    drawn = labels[np.concatenate([np.concatenate(plan.batches(e)) for e in range(200)])]
    share = np.bincount(drawn, minlength=21) / len(drawn)
    assert share[0] == pytest.approx(1 / 21, rel=0.1)  # not 60 / 120 as in the data
    assert share.min() > 0.8 / 21
    assert not np.array_equal(plan.batches(0)[0], plan.batches(1)[0])
    np.testing.assert_array_equal(plan.batches(4)[2], BalancedBatches(labels, 16, 0).batches(4)[2])

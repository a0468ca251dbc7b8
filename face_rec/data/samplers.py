"""Batch plans: which dataset rows form each batch of an epoch, from (seed, epoch) alone.

A plan is a pure function of the seed and the epoch, so a resumed run regenerates the epoch and
skips the batches already done: the data order after resuming equals the uninterrupted run's.
"""

from __future__ import annotations

import numpy as np


class RandomBatches:
    """Every row once per epoch, shuffled; the last incomplete batch is dropped."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0) -> None:
        self.n, self.batch_size, self.seed = len(labels), batch_size, seed
        if self.n < batch_size:
            raise ValueError(f"{self.n} images cannot fill one batch of {batch_size}")

    def __len__(self) -> int:
        return self.n // self.batch_size

    def batches(self, epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]


class BalancedBatches(RandomBatches):
    """Identity-balanced: each slot draws an identity uniformly, then one of its images, so a
    person with 100 photos is seen as often as one with 2. Same epoch length as RandomBatches.

    The epoch's sequence of N draws depends on (seed, epoch) only, not on the batch size: a
    run resumed on another number of ranks sees the same images in the same order."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0) -> None:
        super().__init__(labels, batch_size, seed)
        self.groups = _groups(labels)
        self.sizes = np.array([len(g) for g in self.groups])
        self.flat = np.concatenate(self.groups)
        self.starts = np.cumsum(self.sizes) - self.sizes

    def batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        ids = rng.integers(0, len(self.groups), self.n)
        within = (rng.random(self.n) * self.sizes[ids]).astype(np.int64)
        order = self.flat[self.starts[ids] + within]
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(len(self))]


class IdentityBatches:
    """P identities x K images per batch (for triplet mining). Identities with fewer than two
    images are left out; those with fewer than K images are sampled with replacement."""

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0) -> None:
        self.groups = [g for g in _groups(labels) if len(g) >= 2]
        if len(self.groups) < p:
            raise ValueError(f"need {p} identities with >= 2 images, have {len(self.groups)}")
        self.p, self.k, self.seed = p, k, seed
        self.batch_size = p * k

    def __len__(self) -> int:
        return max(1, sum(len(g) for g in self.groups) // self.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for _ in range(len(self)):
            ids = rng.choice(len(self.groups), self.p, replace=False)
            out.append(
                np.concatenate(
                    [
                        rng.choice(self.groups[i], self.k, replace=len(self.groups[i]) < self.k)
                        for i in ids
                    ]
                )
            )
        return out


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds)


def class_weights(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Per-class loss weights proportional to count^-power, averaging 1 over the samples."""
    counts = np.bincount(labels).astype(np.float64)
    w = np.where(counts > 0, counts, 1.0) ** -power
    return w / (w[labels].mean())

"""Epoch-seeded samplers: the order of epoch ``e`` depends only on (seed, e).

Lightning calls ``set_epoch`` on a sampler that has it, so a run resumed at
epoch ``e`` sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Shuffle (``balanced=False``) or class-aware sampling with replacement (``balanced=True``).

    Args:
        labels: 0/1 per sample, shape (n,).
        seed: base seed.
        balanced: draw each class equally often (class-aware sampling, as in the
            phyllodes study); an epoch still has ``n`` samples.
    """

    def __init__(self, labels: np.ndarray, *, seed: int, balanced: bool = False):
        self.labels = np.asarray(labels).astype(int)
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0
        if balanced and len(np.unique(self.labels)) < 2:
            raise ValueError("balanced sampling needs both classes among the training samples")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.labels)
        if not self.balanced:
            return iter(rng.permutation(n).tolist())
        counts = np.bincount(self.labels, minlength=2)
        weights = 1.0 / counts[self.labels]
        return iter(rng.choice(n, size=n, replace=True, p=weights / weights.sum()).tolist())

"""Tests of the encoder zoo, attention placement, weights and ``breastfusion models``."""

from __future__ import annotations

import pytest
import torch

from ..conftest import one_torch_thread


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    """One intra-op thread: these are tiny tensors, and on a busy 2-core machine two OpenMP threads
    that spin-wait for each other made this folder 15-20× slower (measured: 7 s vs 110-165 s)."""
    with one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

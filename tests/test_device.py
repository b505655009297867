"""Device settings: loader workers and pinned memory, the mixed-precision check (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from breastfusion.training.device import autocast_works, checked_precision, loader_options
from breastfusion.training.fit import select_device


def test_cpu_training_keeps_full_precision_and_no_workers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == ("cpu", "32-true")
    assert loader_options("auto", "cpu") == {"num_workers": 0, "pin_memory": False}


def test_gpu_loader_pins_memory_and_leaves_a_cpu_for_the_loop(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert loader_options("auto", "gpu") == {"num_workers": 4, "pin_memory": True, "persistent_workers": True}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert loader_options("auto", "gpu") == {"num_workers": 0, "pin_memory": True}
    assert loader_options(3, "cpu") == {"num_workers": 3, "pin_memory": False, "persistent_workers": True}


@pytest.mark.parametrize("bad", [-1, "many", True])
def test_bad_worker_counts_are_refused(bad):
    with pytest.raises(ValueError, match="training.num_workers should be a count >= 0 or 'auto'"):
        loader_options(bad, "cpu")


def test_autocast_check_runs_the_kernels():
    assert autocast_works("cpu", torch.bfloat16)  # CPU autocast has bf16 kernels
    assert not autocast_works("cpu", torch.float64)  # not an autocast dtype: refused, not raised
    assert not autocast_works("cuda", torch.bfloat16) or torch.cuda.is_available()


def test_precision_falls_back_when_autocast_fails(monkeypatch):
    import breastfusion.training.device as device

    monkeypatch.setattr(device, "autocast_works", lambda device_type, dtype: dtype == torch.float16)
    with pytest.warns(UserWarning, match="bf16-mixed autocast fails on this gpu; training in 16-mixed"):
        assert checked_precision("gpu", "bf16-mixed") == "16-mixed"
    monkeypatch.setattr(device, "autocast_works", lambda device_type, dtype: False)
    with pytest.warns(UserWarning, match="training in 32-true"):
        assert checked_precision("gpu", "bf16-mixed") == "32-true"
    assert checked_precision("cpu", "32-true") == "32-true"

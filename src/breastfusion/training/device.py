"""Device settings of training: mixed precision that works on the GPU at hand, and DataLoader workers.

None of these change what a network learns (``training.num_workers`` stays out of a network's key); they
decide how fast it learns it.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

__all__ = ["autocast_works", "checked_precision", "available_cpus", "loader_options", "PRECISION_DTYPES"]

#: Lightning mixed-precision names and the autocast dtype each runs in.
PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether a convolution, a linear layer and their backward pass run under ``torch.autocast`` on the device
    in ``dtype`` and give finite numbers (a GPU may report bf16 and still lack kernels for it)."""
    try:
        device = torch.device("cuda" if device_type == "cuda" else device_type)
        conv = torch.nn.Conv2d(1, 4, 3).to(device)
        head = torch.nn.Linear(4, 1).to(device)
        x = torch.rand(2, 1, 8, 8, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "dtype not supported, disabling autocast": answered by the dtype check
            with torch.autocast(device_type=device_type, dtype=dtype):
                y = head(conv(x).mean((2, 3)))
        y.float().sum().backward()
        return bool(torch.isfinite(y.float()).all()) and y.dtype == dtype
    except (RuntimeError, TypeError, ValueError, AssertionError):
        return False


def checked_precision(accelerator: str, precision: str) -> str:
    """``precision`` when its autocast works on ``accelerator``, else the next that does (bf16 → fp16 → fp32),
    with a warning that names what was given up."""
    if precision not in PRECISION_DTYPES:
        return precision
    device_type = "cuda" if accelerator == "gpu" else "cpu"
    for candidate in [p for p in PRECISION_DTYPES if list(PRECISION_DTYPES).index(p) >= list(
            PRECISION_DTYPES).index(precision)]:
        if autocast_works(device_type, PRECISION_DTYPES[candidate]):
            if candidate != precision:
                warnings.warn(f"{precision} autocast fails on this {accelerator}; training in {candidate}",
                              stacklevel=2)
            return candidate
    warnings.warn(f"mixed-precision autocast fails on this {accelerator}; training in 32-true", stacklevel=2)
    return "32-true"


def available_cpus() -> int:
    """CPUs this process may use: its thread budget (``OMP_NUM_THREADS``, which Ray sets per task), else its
    CPU affinity."""
    budget = os.environ.get("OMP_NUM_THREADS", "")
    if budget.isdigit() and int(budget) > 0:
        return int(budget)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_options(num_workers: int | str, accelerator: str) -> dict[str, Any]:
    """DataLoader keyword arguments for ``training.num_workers`` on ``accelerator`` (``cpu`` | ``gpu``).

    ``auto`` is 0 on the CPU (the tensors are in memory; workers would only copy them) and up to 4 on a GPU,
    leaving one CPU for the training loop. Memory is pinned when batches go to a GPU.

    Raises:
        ValueError: a negative count or a string other than ``auto``.
    """
    if num_workers == "auto":
        workers = 0 if accelerator != "gpu" else max(0, min(4, available_cpus() - 1))
    elif isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0:
        workers = num_workers
    else:
        raise ValueError(f"training.num_workers should be a count >= 0 or 'auto', got {num_workers!r}")
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": accelerator == "gpu"}
    if workers:
        options["persistent_workers"] = True
    return options

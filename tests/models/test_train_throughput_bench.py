"""bench/train_throughput.py runs end to end at a toy size and writes the JSON its readers expect (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("train_throughput_bench", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_writes_one_entry_per_model(tmp_path):
    out = tmp_path / "tt.json"
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        _bench().main(["--models", "test_resnet", "--size", "32", "--batch", "8", "--threads", "1", "--rounds", "1",
                       "--lesions", "24", "--skip", "1", "--out", str(out)])
    finally:  # the bench sets these process-wide, as a training run does
        torch.use_deterministic_algorithms(deterministic)
    entry = json.loads(out.read_text())["models"]["test_resnet"]
    for key in ("ratio", "train_images_per_s", "ceiling_images_per_s", "ratio_cpu_time", "batch", "size",
                "torch_threads"):
        assert key in entry
    assert entry["batch"] == 8 and entry["size"] == 32 and entry["torch_threads"] == 1
    assert entry["ratio"] > 0 and entry["train_images_per_s"] > 0

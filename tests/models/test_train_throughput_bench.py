"""bench/train_throughput.py runs end to end at a toy size and writes the JSON its readers expect (no timing asserted)."""

from __future__ import annotations

import json

import torch

from ..bench_scripts import load_bench


def _bench():
    return load_bench("train_throughput")


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

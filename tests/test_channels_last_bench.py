"""bench/channels_last.py run small: both layouts are timed in alternating rounds and the record says so."""

from __future__ import annotations

import json

from .bench_scripts import load_bench


def test_channels_last_bench_times_both_layouts_and_writes_its_record(tmp_path):
    bench = load_bench("channels_last")
    out = tmp_path / "channels_last.json"
    record = bench.main(["--models", "test_resnet:32", "--rounds", "2", "--steps", "1", "--batch", "2",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    row = record["models"]["test_resnet:32"]
    assert len(row["speedup_per_round"]) == 2
    assert row["contiguous_images_per_s"] > 0 and row["channels_last_images_per_s"] > 0
    assert min(row["speedup_per_round"]) <= row["speedup_median"] <= max(row["speedup_per_round"])
    assert record["command"].startswith("python bench/channels_last.py --models test_resnet:32")


def test_channels_last_bench_leaves_the_network_in_the_layout_it_timed_last():
    bench = load_bench("channels_last")
    import torch

    from breastfusion.config import ModelConfig
    from breastfusion.models.network import build_network

    net = build_network(("ultrasound",), ModelConfig.model_validate({"ultrasound": {"encoder": "test_resnet"}}), 0)
    bench.images_per_second(net, 32, batch=2, steps=1, channels_last=True)
    convs = [p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    bench.images_per_second(net, 32, batch=2, steps=1, channels_last=False)
    assert all(p.is_contiguous() for p in net.parameters())

"""bench/cam_cost.py: a heatmap of each method on one network and on a seed ensemble, timed."""

from __future__ import annotations

from .bench_scripts import load_bench


def test_cam_cost_times_every_method_on_a_network_and_a_seed_ensemble():
    cost = load_bench("cam_cost")
    for seeds in (1, 2):
        seconds = cost.cam_seconds("test_resnet", 32, seeds, ("gradcam", "scorecam"))
        assert set(seconds) == {"gradcam", "scorecam"} and all(v >= 0 for v in seconds.values())

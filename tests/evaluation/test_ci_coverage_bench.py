"""The statistical validation in bench/ci_coverage.py: a fast smoke run and the full run (slow)."""

from __future__ import annotations


import pytest

from ..bench_scripts import load_bench


def _bench():
    return load_bench("ci_coverage")


def test_bench_runs_small_and_is_deterministic():
    bench = _bench()
    a = bench.run(4, n_reference=50_000, seed=1)
    b = bench.run(4, n_reference=50_000, seed=1)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert set(a["auc_ci_coverage"]) == set(bench.SCENARIOS)
    assert 0.9 < a["reference"]["all"]["true_auc"] < 0.97


@pytest.mark.slow
def test_bench_full_run_passes_its_checks(request):
    # The marker is documented as "not run by default (-m slow)"; honour that without a global hook.
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("statistical validation (~30 s); run with -m slow")
    result = _bench().run(200)
    failed = {k: v for k, v in result["checks"].items() if not v["passed"]}
    assert not failed, failed

"""The statistical validation in bench/ci_coverage.py: a fast smoke run and the full run (slow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "ci_coverage.py"


def _bench():
    spec = importlib.util.spec_from_file_location("ci_coverage_bench", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

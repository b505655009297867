"""bench/real_data.py's replicate option: the same sections on the folds of another seed, kept apart."""

from __future__ import annotations

import sys

import pytest

from breastfusion.experiment.crossval import fold_positions

from .bench_scripts import load_bench


@pytest.fixture
def bench(monkeypatch):
    module = load_bench("real_data")
    monkeypatch.setattr(module, "CV_SEED", None)
    return module


def test_a_cv_seed_moves_every_config_to_the_folds_of_that_seed(bench, monkeypatch, small_cohort_dir):
    from breastfusion.data.manifest import load_cohort

    path = bench.ROOT / "configs" / "bus_clinical.yaml"
    own = bench.load_bench_config(path)
    assert own.cv.seed == 0
    monkeypatch.setattr(bench, "CV_SEED", 3)
    moved = bench.load_bench_config(path)
    assert moved.cv.seed == 3 and moved.model == own.model and moved.training == own.training
    cohort = load_cohort(small_cohort_dir)
    assert [list(t) for _, t in bench.same_folds(cohort, moved)] == [
        list(p.test) for p in fold_positions(cohort, moved)[0]]
    assert [list(t) for _, t in bench.same_folds(cohort, moved)] != [
        list(t) for _, t in bench.same_folds(cohort, own)]


def test_a_cv_seed_refuses_the_official_split_section(bench, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["real_data.py", "--sections", "breast,breastmnist", "--cv-seed", "2",
                                      "--data", str(tmp_path), "--work", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main()
    assert "breastmnist is reported on its official test split" in capsys.readouterr().err

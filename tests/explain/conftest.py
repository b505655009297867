"""A tiny cross-validated run folder (2 folds, fused variant, 1 epoch) shared by the explain tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..conftest import TINY_MODEL


@pytest.fixture(scope="session")
def tiny_run(small_cohort_dir, tmp_path_factory) -> Path:
    """Run folder of a mammography + ultrasound + clinical network on the 60-subject cohort (default preprocessing)."""
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.experiment.run import run_experiment

    out = tmp_path_factory.mktemp("run")
    config = load_config(None, name="tiny", manifest=small_cohort_dir,
                         variants={"fused": ["mammography", "ultrasound", "clinical"]}, model=TINY_MODEL,
                         training={"epochs": 1, "batch_size": 16}, cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(small_cohort_dir), config, out)
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the run folder (for tests that write into it or break it)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))

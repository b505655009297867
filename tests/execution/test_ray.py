"""Cross-validation through Ray gives the local executor's predictions, retries a killed task, resumes a run.

A local Ray cluster of 2 CPUs is started by the fixture (one per module); the cohort is 24 subjects.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'breastfusion[ray]'")

from breastfusion import execution  # noqa: E402
from breastfusion.config import load_config  # noqa: E402
from breastfusion.data.manifest import load_cohort  # noqa: E402
from breastfusion.data.synthetic.cohort import generate_cohort  # noqa: E402
from breastfusion.experiment.crossval import cross_validate, network_spec  # noqa: E402
from breastfusion.execution import ExecutionError, ray_executor  # noqa: E402

from ..conftest import TINY_MODEL, TINY_TRAINING  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-cohort")
    generate_cohort(root, n_subjects=24, seed=0, image_px=48)
    return load_cohort(root)


def _config(executor: str, **execution):
    # fused starts from the us network and a clinical one (trained on demand): a two-level DAG
    return load_config(None, variants={"us": ["ultrasound"], "fused": ["ultrasound", "clinical"]},
                       model=TINY_MODEL, training=TINY_TRAINING, cv={"n_splits": 3, "bootstrap": 100},
                       execution={"executor": executor, **execution})


@pytest.fixture(scope="module")
def local_reference(cohort, tmp_path_factory):
    return cross_validate(cohort, _config("local"), checkpoint_dir=tmp_path_factory.mktemp("local"))


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(a.predictions, b.predictions, check_exact=False, rtol=1e-6, atol=1e-6)
    pd.testing.assert_frame_equal(a.calibration, b.calibration, check_exact=False, rtol=1e-6, atol=1e-6)


def test_ray_cross_validation_matches_the_local_executor(ray_cluster, cohort, local_reference, tmp_path,
                                                         monkeypatch):
    ran = []
    submit = execution.run_trainings
    monkeypatch.setattr(execution, "run_trainings", lambda *a, **k: ran.extend(submit(*a, **k)) or ran)
    distributed = cross_validate(cohort, _config("ray"), checkpoint_dir=tmp_path)
    _same(distributed, local_reference)
    config = _config("ray")
    # 3 networks × 3 folds, each trained once, in Ray workers (not this process)
    assert len(ran) == 9 and all(r["trained"] for r in ran)
    assert {(r["key"], r["fold"]) for r in ran} == {(s.key, k) for s in [network_spec(config, "us"),
                                                                          *network_spec(config, "fused").init,
                                                                          network_spec(config, "fused")]
                                                    for k in range(3)}
    fused = network_spec(config, "fused").key
    for k in range(3):
        assert (tmp_path / "networks" / fused / f"fold{k}.safetensors").is_file()
        assert not (tmp_path / "networks" / fused / f"fold{k}-running").exists()
    assert (tmp_path / "fused" / "fold2.safetensors").samefile(tmp_path / "networks" / fused / "fold2.safetensors")

    # A driver killed after some trainings: only the unfinished ones are submitted again.
    us = tmp_path / "networks" / network_spec(config, "us").key
    for suffix in (".safetensors", ".csv"):
        (us / f"fold1{suffix}").unlink()
    shutil.rmtree(tmp_path / "networks" / fused)
    ran.clear()
    resumed = cross_validate(cohort, config, checkpoint_dir=tmp_path)
    assert sorted((r["key"], r["fold"]) for r in ran) == sorted([(us.name, 1)] + [(fused, k) for k in range(3)])
    _same(resumed, local_reference)


def _killed_once(cohort, config, images, checkpoint_dir, positions, task, *needs, threads=1):
    """The ultrasound network of fold 1 loses its worker process in its second epoch, the first time it runs."""
    marker = Path(checkpoint_dir) / f"killed-{task.spec.key}-{task.tag}"
    if task.spec.modalities == ("ultrasound",) and task.fold == 1 and not marker.exists():
        marker.touch()
        from breastfusion.training.module import LesionClassifier

        calls = itertools.count()

        def die_in_epoch_2(self, outputs, batch, batch_idx):
            if self.current_epoch == 1 and next(calls) == 0:
                os._exit(1)  # the worker dies: Ray sees a lost task, not an exception

        LesionClassifier.on_train_batch_end = die_in_epoch_2
    return ray_executor.train_task(cohort, config, images, checkpoint_dir, positions, task, *needs,
                                   threads=threads)


def test_a_killed_task_is_retried_and_resumes_to_the_same_numbers(ray_cluster, cohort, local_reference, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(ray_executor, "train_task", _killed_once)
    distributed = cross_validate(cohort, _config("ray", max_retries=1), checkpoint_dir=tmp_path)
    us = network_spec(_config("ray"), "us").key
    assert (tmp_path / f"killed-{us}-fold1").is_file()  # it did die once
    _same(distributed, local_reference)


def test_a_task_failing_every_retry_names_the_network_and_fold(ray_cluster, cohort, tmp_path, monkeypatch):
    def always_fails(cohort, config, images, checkpoint_dir, positions, task, *needs, threads=1):
        raise ValueError(f"broken {task.tag}")

    monkeypatch.setattr(ray_executor, "train_task", always_fails)
    with pytest.raises(ExecutionError, match=r"network \w+ \((ultrasound|clinical)\), fold\d failed after 0 "
                                             r"retries: ValueError: broken fold\d.*--resume"):
        cross_validate(cohort, _config("ray", max_retries=0), checkpoint_dir=tmp_path)


def test_ray_needs_a_checkpoint_folder(ray_cluster, cohort):
    with pytest.raises(ExecutionError, match="checkpoint_dir"):
        cross_validate(cohort, _config("ray"))

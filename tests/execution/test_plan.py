"""The training plan: every (network, fold) once, dependencies first; where it runs is not what it learns."""

from __future__ import annotations

import pytest

from breastfusion.config import ConfigError, load_config
from breastfusion.experiment.crossval import network_spec
from breastfusion.execution import finished, plan_trainings, waves
from breastfusion.execution.plan import checkpoint_paths

from ..conftest import TINY_MODEL, TINY_TRAINING


def _config(**extra):
    settings = {"variants": {"us": ["ultrasound"], "fused": ["ultrasound", "clinical"],
                             "mammo+us": ["mammography", "ultrasound"]},
                "model": TINY_MODEL, "training": TINY_TRAINING, "cv": {"n_splits": 3}}
    return load_config(None, **{**settings, **extra})


def test_plan_lists_each_network_and_fold_once_after_what_it_starts_from():
    config = _config()
    specs = [network_spec(config, v) for v in config.variants]
    tasks = plan_trainings(specs, [3, 3])
    # us, clinical (trained on demand for fused), mammography (for mammo+us), fused, mammo+us: 5 networks
    assert len({t.spec.key for t in tasks}) == 5
    assert len(tasks) == 5 * 6 and len({t.id for t in tasks}) == len(tasks)
    seen = set()
    for task in tasks:
        assert set(task.needs) <= seen, f"{task.describe()} planned before a network it starts from"
        seen.add(task.id)
    fused = network_spec(config, "fused")
    assert {n for t in tasks if t.spec.key == fused.key for n in t.needs} == {
        (s.key, r, k) for s in fused.init for r in range(2) for k in range(3)}
    assert [sorted({t.depth for t in w}) for w in waves(tasks)] == [[0], [1]]
    assert {t.spec.modalities for t in waves(tasks)[0]} == {("ultrasound",), ("clinical",), ("mammography",)}


def test_repeat_tags_match_the_local_runner_files(tmp_path):
    config = _config()
    task = plan_trainings([network_spec(config, "us")], [2, 2])[-1]
    assert (task.repeat, task.fold, task.tag) == (1, 1, "repeat1-fold1")
    weights, rows = checkpoint_paths(tmp_path, task)
    assert weights == tmp_path / "networks" / task.spec.key / "repeat1-fold1.safetensors"
    assert not finished(tmp_path, task)
    weights.parent.mkdir(parents=True)
    weights.touch()
    assert not finished(tmp_path, task)  # weights without predictions: not finished
    rows.touch()
    assert finished(tmp_path, task)


def test_execution_and_loader_workers_do_not_change_a_network_key():
    plain = _config()
    elsewhere = _config(execution={"executor": "ray", "address": "auto", "cpus_per_task": 2, "gpus_per_task": 0.5,
                                   "max_retries": 5})
    workers = _config(training={**TINY_TRAINING, "num_workers": "auto"})
    for v in plain.variants:
        assert network_spec(plain, v).key == network_spec(elsewhere, v).key == network_spec(workers, v).key
    assert network_spec(plain, "us").key != network_spec(_config(training={**TINY_TRAINING, "epochs": 3}), "us").key


@pytest.mark.parametrize("execution, match", [
    ({"executor": "spark"}, "execution.executor"),
    ({"cpus_per_task": 0}, "execution.cpus_per_task"),
    ({"gpus_per_task": -1}, "execution.gpus_per_task"),
    ({"max_retries": -1}, "execution.max_retries"),
    ({"retries": 1}, "execution.retries"),
])
def test_bad_execution_settings_name_the_key(execution, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, execution=execution)


def test_cli_executor_flags_change_only_where_it_runs():
    from breastfusion.execution import same_experiment, with_executor

    config = _config()
    on_ray = with_executor(config, "ray", "auto")
    assert (on_ray.execution.executor, on_ray.execution.address) == ("ray", "auto")
    assert with_executor(config) is config
    assert same_experiment(config, on_ray) and on_ray != config  # a Ray run can be resumed locally
    assert not same_experiment(config, _config(cv={"n_splits": 4}))
    with pytest.raises(ConfigError, match=r"--executor should be one of \['local', 'ray'\], got 'spark'"):
        with_executor(config, "spark")


def test_run_refuses_an_unknown_executor(tmp_path):
    from typer.testing import CliRunner

    from breastfusion.cli.main import app

    result = CliRunner().invoke(app, ["run", "--manifest", str(tmp_path), "--executor", "spark"])
    assert result.exit_code == 2 and "--executor should be one of" in result.output

"""Pooling another cohort into the training folds: the folds and the figures stay the first cohort's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.config import load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.data.pooling import TRAINING_ONLY_COLUMN, pool_cohorts, write_pooled
from breastfusion.data.synthetic.cohort import generate_cohort
from breastfusion.evaluation.splits import SplitError, training_only
from breastfusion.experiment.crossval import fold_positions
from breastfusion.experiment.run import run_experiment
from breastfusion.experiment.run_artifacts import load_run

from ..conftest import TINY_MODEL, one_torch_thread


@pytest.fixture(scope="module")
def two_cohorts(tmp_path_factory) -> tuple[Path, Path]:
    """Two synthetic cohorts whose subject and lesion ids collide (both S00, S01, ...)."""
    own = tmp_path_factory.mktemp("own")
    other = tmp_path_factory.mktemp("other")
    generate_cohort(own, n_subjects=30, seed=5, image_px=32)
    generate_cohort(other, n_subjects=24, seed=6, image_px=32)
    return own, other


def _config(**cv):
    return load_config(None, name="pooled", variants={"ultrasound": ["ultrasound"]}, model=TINY_MODEL,
                       training={"epochs": 1, "batch_size": 16},
                       cv={"n_splits": 3, "bootstrap": 100, "training_only_column": TRAINING_ONLY_COLUMN, **cv})


def test_the_pooled_cohort_keeps_the_first_as_it_is_and_prefixes_the_others(two_cohorts):
    own, other = (load_cohort(p) for p in two_cohorts)
    pooled = pool_cohorts(own, {"site2": other})
    manifest = pooled.manifest
    first = manifest.iloc[:len(own.manifest)]
    assert first["lesion_id"].tolist() == own.manifest["lesion_id"].tolist()
    assert (first[TRAINING_ONLY_COLUMN] == "0").all()
    rest = manifest.iloc[len(own.manifest):]
    assert len(rest) == len(other.manifest) and (rest[TRAINING_ONLY_COLUMN] == "1").all()
    assert rest["subject_id"].tolist() == ["site2:" + s for s in other.manifest["subject_id"]]
    assert set(own.lesions["lesion_id"]) & set(other.lesions["lesion_id"])  # the ids did collide
    assert pooled.lesions["lesion_id"].is_unique
    for cell in rest["mask_path"].dropna():
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in cell.split("|"))
    # clinical tables are stacked, the pooled subjects prefixed like their images
    assert len(pooled.clinical) == len(own.clinical) + len(other.clinical)
    assert set(pooled.clinical["subject_id"]) <= set(manifest["subject_id"])


def test_the_folds_are_the_first_cohorts_own_with_every_pooled_lesion_in_each_training_set(two_cohorts):
    own, other = (load_cohort(p) for p in two_cohorts)
    pooled = pool_cohorts(own, {"site2": other})
    config = _config(seed=4)
    alone = fold_positions(own, config.model_copy(update={"cv": config.cv.model_copy(
        update={"training_only_column": None})}))[0]
    with_pool = fold_positions(pooled, config)[0]
    extra = np.flatnonzero(pooled.lesions["lesion_id"].str.startswith("site2:"))
    assert len(extra) == len(other.lesions)
    for a, b in zip(alone, with_pool, strict=True):
        assert np.array_equal(a.test, b.test)                     # the same held-out lesions, the same positions
        assert np.array_equal(b.fit, np.sort(np.concatenate([a.fit, extra])))
    assert not np.isin(np.concatenate([p.test for p in with_pool]), extra).any()
    # an inner validation split draws from the whole training side; nothing pooled is ever tested
    validated = fold_positions(pooled, _config(seed=4).model_copy(update={"training": _config().training.model_copy(
        update={"val_fraction": 0.25})}))[0]
    for a, b in zip(alone, validated, strict=True):
        assert np.array_equal(a.test, b.test) and np.isin(extra, b.train).all()


def test_a_pooled_run_trains_on_both_and_reports_the_first_cohort_only(two_cohorts, tmp_path):
    own = load_cohort(two_cohorts[0])
    folder = write_pooled(two_cohorts[0], {"site2": two_cohorts[1]}, tmp_path / "pooled")
    with one_torch_thread():
        results = run_experiment(load_cohort(folder), _config(), tmp_path / "run")
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"lesion_id": str})
    assert sorted(predictions["lesion_id"]) == sorted(own.lesions["lesion_id"])
    # in-sample calibration scores are the training side's: the pooled lesions are there
    calibration = pd.read_csv(tmp_path / "run" / "calibration_predictions.csv", dtype={"lesion_id": str})
    assert calibration["lesion_id"].str.startswith("site2:").any()
    n_pooled = len(load_cohort(two_cohorts[1]).lesions)
    assert results["cohort"]["n_training_only"] == n_pooled
    assert results["cohort"]["n_lesions"] == len(own.lesions) + n_pooled
    assert f"{n_pooled} of the {len(own.lesions) + n_pooled} lesions come from pooled cohorts" in \
        (tmp_path / "run" / "report.html").read_text()
    reloaded = load_run(tmp_path / "run")             # explain / export see the run's own folds again
    assert [t.tolist() for _, t in reloaded.folds] == [p.test.tolist() for p in fold_positions(
        load_cohort(folder), _config())[0]]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.assign(training_only=m["training_only"].where(m.index != 3, "maybe")), r"line 5: 'maybe'"),
    (lambda m: m.drop(columns="training_only"), r"no column 'training_only'"),
    (lambda m: m.assign(training_only="1"), r"every lesion is training-only"),
])
def test_bad_training_only_columns_are_refused_naming_what_is_wrong(two_cohorts, edit, message):
    own = load_cohort(two_cohorts[0])
    manifest = edit(own.manifest.assign(training_only="0"))
    with pytest.raises(SplitError, match=message):
        training_only(manifest, own.lesions, "training_only")


def test_a_lesion_or_subject_split_across_training_only_and_ordinary_is_refused(two_cohorts):
    own = load_cohort(two_cohorts[0])
    manifest = own.manifest.assign(training_only="0")
    first = manifest["lesion_id"].iloc[0]
    rows = manifest.index[manifest["lesion_id"] == first]
    assert len(rows) > 1                              # the synthetic lesion has several images
    half = manifest.copy()
    half.loc[rows[0], "training_only"] = "1"
    with pytest.raises(SplitError, match=rf"lesion '{first}' is training-only on some rows"):
        training_only(half, own.lesions, "training_only")
    lesions = pd.DataFrame({"lesion_id": ["a", "b", "c"], "subject_id": ["s1", "s1", "s2"]})
    table = pd.DataFrame({"lesion_id": ["a", "b", "c"], "training_only": ["1", "0", "0"]})
    with pytest.raises(SplitError, match=r"subject_id 's1' has training-only and ordinary lesions"):
        training_only(table, lesions, "training_only")
    assert training_only(table.assign(training_only=["TRUE", " no ", ""]), lesions.assign(subject_id=["s1", "s2",
                                                                                                       "s3"]),
                         "training_only").tolist() == [True, False, False]


def test_pooling_refuses_no_cohort_a_bad_name_and_a_taken_column(two_cohorts):
    own, other = (load_cohort(p) for p in two_cohorts)
    with pytest.raises(ValueError, match="no cohort to pool"):
        pool_cohorts(own, {})
    with pytest.raises(ValueError, match="without ':'"):
        pool_cohorts(own, {"a:b": other})
    with pytest.raises(ValueError, match="already has a column 'subject_id'"):
        pool_cohorts(own, {"site2": other}, column="subject_id")


def test_official_splits_refuse_a_pooled_cohort(two_cohorts):
    own, other = (load_cohort(p) for p in two_cohorts)
    pooled = pool_cohorts(own, {"site2": other})
    with pytest.raises(ValueError, match="cv.split_column and cv.training_only_column"):
        fold_positions(pooled, _config(split_column="split"))


def test_data_pool_writes_a_self_contained_folder_that_loads_and_splits_as_the_first_cohort(two_cohorts, tmp_path):
    own_dir, other_dir = two_cohorts
    out = tmp_path / "pooled"
    result = CliRunner().invoke(app, ["data", "pool", str(own_dir), "--add", f"site2={other_dir}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "run it with cv: {training_only_column: training_only}" in result.output
    pooled = load_cohort(out)                         # every path inside the folder: no --allow-outside-root
    assert all(Path(p).is_relative_to(out.resolve()) for p in pooled.manifest["path"])
    own = load_cohort(own_dir)
    a, b = fold_positions(own, _config(training_only_column=None))[0], fold_positions(pooled, _config())[0]
    assert all(np.array_equal(x.test, y.test) for x, y in zip(a, b, strict=True))
    bad = CliRunner().invoke(app, ["data", "pool", str(own_dir), "--add", "site2", "--out", str(out)])
    assert bad.exit_code != 0 and "expected KEY=VALUE" in bad.output
    with pytest.raises(ValueError, match="'primary' names the first cohort"):
        write_pooled(own_dir, {"primary": other_dir}, tmp_path / "again")


@pytest.mark.parametrize(("pooled_name", "measured_name"), [("bus_clinical_lite0_pooled.yaml", "bus_clinical_lite0.yaml"),
                                                         ("bus_clinical_pooled.yaml", "bus_clinical.yaml")])
def test_each_shipped_pooled_config_is_the_measured_network_on_the_column_data_pool_writes(pooled_name, measured_name):
    from breastfusion.config import deep_merge
    from breastfusion.experiment.crossval import network_spec

    configs = Path(__file__).resolve().parents[2] / "configs"
    pooled = load_config(configs / pooled_name)
    assert pooled.cv.training_only_column == TRAINING_ONLY_COLUMN
    single = load_config(configs / measured_name)
    measured = type(single).model_validate(deep_merge(single.model_dump(), {
        "training": {"seeds": 3}, "cv": {"training_only_column": TRAINING_ONLY_COLUMN}}))
    # bench/busi_recipes.py ran the single-cohort config with these overrides, one member seed per run (training.seed
    # j x MEMBER_SEED_STRIDE, seeds: 1), and bench/selection_ensembles.py averaged the three: the same network, fold
    # for fold (tests/test_seed_ensemble.py checks that a seed ensemble is that average)
    assert pooled.training.seeds == 3 and pooled.training.seed == 0
    assert network_spec(pooled, "ultrasound").key == network_spec(measured, "ultrasound").key
    assert pooled.cv.seed == measured.cv.seed and pooled.cv.n_splits == measured.cv.n_splits


def test_images_outside_their_cohort_folder_keep_distinct_links_when_their_names_collide(two_cohorts, tmp_path):
    import shutil

    from breastfusion.data.manifest import cohort_from_frame

    other = load_cohort(two_cohorts[1])
    manifest = other.manifest.copy()
    moved = []
    for i, row in enumerate(manifest.index[:2]):    # two images called the same, in two folders outside the cohort
        target = tmp_path / f"elsewhere{i}" / "scan.png"
        target.parent.mkdir()
        shutil.copy(manifest.at[row, "path"], target)
        manifest.at[row, "path"] = str(target)
        moved.append(target)
    assert moved[0].read_bytes() != moved[1].read_bytes()
    outside = cohort_from_frame(manifest, other.clinical, root=other.root)
    folder = write_pooled(two_cohorts[0], {"site2": outside}, tmp_path / "pooled")
    pooled = load_cohort(folder).manifest
    first = len(load_cohort(two_cohorts[0]).manifest)   # the pooled rows follow the first cohort's, in order
    for row, source in zip(manifest.index[:2], moved, strict=True):
        assert Path(pooled.at[first + row, "path"]).read_bytes() == source.read_bytes()

"""``localiser.fit_crops: cross_fitted``: the networks are fitted on crops to the boxes of localisers that never saw
those images' masks, so they learn from the same kind of crop they are tested on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from breastfusion.config import ConfigError, LocaliserConfig, load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.data.preprocess import preprocess
from breastfusion.data.readers import read_image
from breastfusion.experiment import crossval
from breastfusion.experiment.localisation import LocalisationError, cross_fit_parts, localiser_tag

from .test_localised_roi import (CONFIGS, LOCALISER, MODEL, PREDICTED, assert_a_rerun_reuses_every_localiser,
                                  recorded_run)

CROSS_FITTED = {**LOCALISER, "fit_crops": "cross_fitted", "cross_fit_folds": 2}

#: network keys of bus_clinical_localised.yaml (then with reader-mask fitting crops) before fit_crops existed
#: (git show 98308e7)
LOCALISED_KEYS_BEFORE = {"clinical": "2035337fbc376f0f", "ultrasound": "a47608e5a425c1e3",
                         "fused": "a47608e5a425c1e3", "fused_network": "43c377c51a3d24ea"}


def _with_localiser(config, **update):
    branch = config.model.ultrasound
    return config.model_copy(update={"model": config.model.model_copy(update={"ultrasound": branch.model_copy(
        update={"localiser": branch.localiser.model_copy(update=update)})})})


# -- config and keys -------------------------------------------------------------------------------------------------


def test_reader_crops_are_the_default_and_a_localiser_per_part_is_counted():
    assert LocaliserConfig().fit_crops == "reader" and LocaliserConfig().fits_per_fold == 1
    assert LocaliserConfig(fit_crops="cross_fitted", cross_fit_folds=3).fits_per_fold == 4
    with pytest.raises(ConfigError, match=r"model\.ultrasound\.localiser\.cross_fit_folds"):
        load_config(None, name="x", model={"ultrasound": {"preprocess": {"roi": "predicted"},
                                                          "localiser": {"cross_fit_folds": 1}}})
    with pytest.raises(ConfigError, match=r"model\.ultrasound\.localiser\.fit_crops"):
        load_config(None, name="x", model={"ultrasound": {"preprocess": {"roi": "predicted"},
                                                          "localiser": {"fit_crops": "mask"}}})


def test_the_crop_plan_changes_the_network_key_but_not_the_localisers():
    localised = _with_localiser(load_config(CONFIGS / "bus_clinical_localised.yaml"), fit_crops="reader")
    assert {v: crossval.network_spec(localised, v).key for v in localised.variants} == LOCALISED_KEYS_BEFORE
    crossed = _with_localiser(localised, fit_crops="cross_fitted")
    three = _with_localiser(localised, fit_crops="cross_fitted", cross_fit_folds=3)
    assert crossval.network_spec(crossed, "ultrasound").key == crossval.network_spec(
        load_config(CONFIGS / "bus_clinical_localised.yaml"), "ultrasound").key  # the shipped config cross-fits
    keys = {crossval.network_spec(c, "ultrasound").key for c in (localised, crossed, three)}
    assert len(keys) == 3                                       # networks fitted on other crops: other networks
    tags = {localiser_tag(c.model.ultrasound.localiser) for c in (localised, crossed, three)}
    assert len(tags) == 1                                       # the fold localisers themselves are the same
    assert localiser_tag(_with_localiser(localised, epochs=31).model.ultrasound.localiser) not in tags


def test_cross_fit_parts_partition_the_fitting_lesions_by_subject(small_cohort_dir):
    lesions = load_cohort(small_cohort_dir).lesions
    positions = np.arange(0, len(lesions), 2)
    parts = cross_fit_parts(lesions, positions, 3, seed=5)
    assert len(parts) == 3
    own = np.concatenate([p for _, p in parts])
    assert sorted(own.tolist()) == positions.tolist()           # each fitting lesion in exactly one part
    for others, part in parts:
        assert sorted(np.concatenate([others, part]).tolist()) == positions.tolist()
        assert not set(lesions["subject_id"].iloc[others]) & set(lesions["subject_id"].iloc[part])
    assert [p.tolist() for _, p in parts] == [p.tolist() for _, p in cross_fit_parts(lesions, positions, 3, seed=5)]
    with pytest.raises(LocalisationError, match=r"cross_fit_folds.*cannot fill 10 folds"):
        cross_fit_parts(lesions, positions[:12], 10, seed=5)


# -- a cross-validated run -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cross_fitted_run(small_cohort_dir, tmp_path_factory):
    """A 2-fold cross-fitted run (inner validation split), recording every localiser fit and network dataset."""
    config = load_config(None, name="tiny_cross_fitted", variants={"ultrasound": ["ultrasound"]},
                         model={**MODEL, "ultrasound": {**MODEL["ultrasound"], "localiser": CROSS_FITTED}},
                         training={"epochs": 1, "batch_size": 16, "val_fraction": 0.25},
                         cv={"n_splits": 2, "bootstrap": 100})
    run = recorded_run(small_cohort_dir, config, tmp_path_factory.mktemp("cross_fitted") / "run")
    return {**run, "boxes": pd.read_csv(run["dir"] / "localiser_boxes.csv", dtype={"lesion_id": str})}


def test_each_part_of_a_folds_fitting_lesions_is_boxed_by_a_localiser_fitted_on_the_other_parts(cross_fitted_run):
    folds, fitted, boxes = cross_fitted_run["folds"], cross_fitted_run["fitted"], cross_fitted_run["boxes"]
    ids = cross_fitted_run["cohort"].lesions["lesion_id"].to_numpy()
    assert len(fitted) == len(folds) * 3                           # the fold's localiser, then one per part
    for k, fold in enumerate(folds):
        own, *parts = fitted[3 * k: 3 * k + 3]
        assert set(own["positions"].tolist()) == set(fold.fit.tolist())
        fit_rows = boxes[(boxes["fold"] == k) & (boxes["split"] == "fit")]
        assert fit_rows["lesion_id"].is_unique and set(fit_rows["lesion_id"]) == set(ids[fold.fit])
        boxed_by_parts = set()
        for call in parts:
            trained_on = set(call["positions"].tolist())
            assert trained_on < set(fold.fit.tolist())              # never a validation or test lesion
            boxed = set(fold.fit.tolist()) - trained_on             # the part this localiser crops
            assert boxed and not boxed & boxed_by_parts
            boxed_by_parts |= boxed
        assert boxed_by_parts == set(fold.fit.tolist())
        assert len({call["seed"] for call in fitted[3 * k: 3 * k + 3]}) == 3
    saved = {p.name for p in (cross_fitted_run["dir"] / "checkpoints" / "localisers").glob("*/*.safetensors")}
    assert saved == {f"fold{k}{part}.safetensors" for k in range(2) for part in ("", ".part0", ".part1")}


def test_the_networks_fit_on_cross_fitted_crops_and_are_tested_on_the_fold_localisers(cross_fitted_run):
    cohort, folds, boxes = cross_fitted_run["cohort"], cross_fitted_run["folds"], cross_fitted_run["boxes"]
    ultrasound = cohort.manifest[cohort.manifest["modality"] == "ultrasound"].set_index("lesion_id")
    ids = cohort.lesions["lesion_id"].to_numpy()

    def crop(position: int, k: int, split: str) -> np.ndarray:
        row = boxes[(boxes["fold"] == k) & (boxes["split"] == split) & (boxes["lesion_id"] == ids[position])]
        assert len(row) == 1
        box = tuple(int(row[c].iloc[0]) for c in ("top", "left", "bottom", "right"))
        return preprocess(read_image(ultrasound.loc[ids[position], "path"]), PREDICTED, roi=box).pixels

    seen = set()
    for call in cross_fitted_run["datasets"]:
        for k, fold in enumerate(folds):
            for split, positions in (("fit", fold.fit), ("test", fold.test), ("validation", fold.validation)):
                if set(call["idx"].tolist()) == set(positions.tolist()):
                    seen.add((k, split))
                    for i in call["idx"]:
                        np.testing.assert_array_equal(call["images"][i, 0, 0].numpy(), crop(int(i), k, split),
                                                      err_msg=f"fold {k} {split} position {i}")
    assert seen == {(k, split) for k in range(2) for split in ("fit", "test", "validation")}


def test_the_localisation_summary_is_over_test_images_only(cross_fitted_run):
    boxes = cross_fitted_run["boxes"]
    test = boxes[boxes["split"] == "test"]
    summary = json.loads((cross_fitted_run["dir"] / "results.json").read_text())["localisation"]["ultrasound"]
    assert summary["n_images"] == len(test) == len(cross_fitted_run["cohort"].lesions)
    assert summary["median_iou"] == pytest.approx(float(test["iou"].median()))
    assert set(boxes["split"]) == {"fit", "test", "validation"}


def test_a_rerun_reuses_every_saved_localiser_and_reproduces_the_run(cross_fitted_run, tmp_path, monkeypatch):
    assert_a_rerun_reuses_every_localiser(cross_fitted_run, tmp_path, monkeypatch)


def test_the_bundle_keeps_only_the_fold_localisers(cross_fitted_run, tmp_path):
    from breastfusion import export_bundle

    bundle = export_bundle(cross_fitted_run["dir"], tmp_path / "bundle")
    assert sorted(p.name for p in bundle.glob("localiser_*")) == [f"localiser_ultrasound_fold{k}.safetensors"
                                                                  for k in range(2)]

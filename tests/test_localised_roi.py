"""``preprocess.roi: predicted``: an in-fold lesion localiser crops the held-out images, from config to bundle."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from breastfusion.config import ConfigError, LocaliserConfig, load_config
from breastfusion.data.cache import read_mask, roi_inputs
from breastfusion.data.manifest import load_cohort
from breastfusion.data.preprocess import params_for, preprocess
from breastfusion.data.readers import read_image
from breastfusion.experiment import crossval
from breastfusion.experiment.localisation import LocalisationError
from breastfusion.models.localiser import box_from_probs, frame_box_to_image, predict_lesion_probs

from .conftest import TINY_MODEL, assert_bundle_refuses_a_changed_then_a_missing

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOCALISER = {"image_size": 32, "epochs": 2}
MODEL = {**TINY_MODEL, "ultrasound": {**TINY_MODEL["ultrasound"], "preprocess": {"roi": "predicted"},
                                      "localiser": LOCALISER}}
#: the networks' ultrasound preprocessing of the run: fitting images cropped to the reader's mask, the others to
#: the localiser's box (the default roi_margin)
PREDICTED = params_for("ultrasound", size=32, roi="predicted")
READER = params_for("ultrasound", size=32, roi="mask")


def tiny_config(variants=None, **overrides):
    settings = {"training": {"epochs": 1, "batch_size": 16}, "cv": {"n_splits": 2, "bootstrap": 100}, **overrides}
    return load_config(None, name="tiny_localised", variants=variants or {"ultrasound": ["ultrasound"]},
                       model=MODEL, **settings)


def _blank_masks(src: Path, dst: Path, which=None) -> Path:
    """A copy of the cohort at ``src`` whose ultrasound rows (those at ``which``: all) have no mask_path."""
    root = Path(shutil.copytree(src, dst))
    manifest = pd.read_csv(root / "manifest.csv")
    rows = manifest.index[manifest["modality"] == "ultrasound"] if which is None else which
    manifest.loc[rows, "mask_path"] = ""
    manifest.to_csv(root / "manifest.csv", index=False)
    return root


# -- config --------------------------------------------------------------------------------------------------------


def test_a_predicted_roi_fills_the_localiser_defaults_and_keeps_the_settings_given():
    plain = load_config(None, name="x", variants={"ultrasound": ["ultrasound"]},
                        model={"ultrasound": {"preprocess": {"roi": "predicted"}}})
    assert plain.model.ultrasound.localiser == LocaliserConfig()
    assert plain.model.mammography.localiser is None          # only the branch that crops to a predicted box
    tiny = tiny_config()
    assert tiny.model.ultrasound.localiser == LocaliserConfig(image_size=32, epochs=2)
    assert tiny.model.ultrasound.localiser.threshold == LocaliserConfig().threshold
    for roi in ({}, {"roi": "mask"}, {"roi": "none"}):
        assert load_config(None, name="x", model={"ultrasound": {"preprocess": roi}}).model.ultrasound.localiser \
            is None


@pytest.mark.parametrize("preprocess", [{}, {"roi": "mask"}, {"roi": "box"}])
def test_localiser_settings_without_a_predicted_roi_are_a_config_error(preprocess):
    with pytest.raises(ConfigError, match=r"model\.ultrasound.*localiser is set, but preprocess\.roi is not "
                                          r"'predicted'"):
        load_config(None, name="x", model={"ultrasound": {"preprocess": preprocess, "localiser": {"epochs": 2}}})


def test_bad_localiser_settings_are_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.ultrasound\.localiser\.epochs"):
        load_config(None, name="x", model={"ultrasound": {"preprocess": {"roi": "predicted"},
                                                          "localiser": {"epochs": 0}}})
    with pytest.raises(ConfigError, match=r"model\.ultrasound\.localiser\.nope"):
        load_config(None, name="x", model={"ultrasound": {"preprocess": {"roi": "predicted"},
                                                          "localiser": {"nope": 1}}})


def test_localised_config_is_the_scratch_config_with_a_localiser_box_crop():
    localised = load_config(CONFIGS / "bus_clinical_localised.yaml")
    whole, roi = load_config(CONFIGS / "bus_clinical.yaml"), load_config(CONFIGS / "bus_clinical_roi.yaml")
    assert localised.name == "bus_clinical_localised"
    assert localised.model.ultrasound.preprocess == {"roi": "predicted",
                                                     "roi_margin": roi.model.ultrasound.preprocess["roi_margin"]}
    assert localised.model.ultrasound.localiser == LocaliserConfig(encoder="mobilenetv3_small_100", image_size=96,
                                                                   epochs=30, augment="affine",
                                                                   views="crop_and_frame", fit_crops="cross_fitted",
                                                                   cross_fit_folds=2)
    as_whole = localised.model_copy(update={"name": whole.name, "model": localised.model.model_copy(update={
        "ultrasound": localised.model.ultrasound.model_copy(update={"preprocess": {}, "localiser": None})})})
    assert as_whole.model_dump() == whole.model_dump()
    # every variant keeps the localiser (images are prepared once per run)
    assert crossval.preprocessing_params(localised, ["ultrasound"])["ultrasound"].roi == "predicted"


def test_lite0_localised_config_is_the_lite0_config_with_the_localised_crop():
    lite0_localised = load_config(CONFIGS / "bus_clinical_lite0_localised.yaml")
    lite0 = load_config(CONFIGS / "bus_clinical_lite0.yaml")
    localised = load_config(CONFIGS / "bus_clinical_localised.yaml")
    branch = lite0_localised.model.ultrasound
    assert (branch.preprocess, branch.localiser) == (localised.model.ultrasound.preprocess,
                                                     localised.model.ultrasound.localiser)  # the same fold localisers
    # one network per fold: the quartet member was chosen as one network; Lite0 on the whole frame is a 3-seed ensemble
    assert (lite0_localised.training.seeds, lite0.training.seeds) == (1, 3)
    as_lite0 = lite0_localised.model_copy(update={
        "name": lite0.name, "training": lite0_localised.training.model_copy(update={"seeds": 3}),
        "model": lite0_localised.model.model_copy(
            update={"ultrasound": branch.model_copy(update={"preprocess": {}, "localiser": None})})})
    assert as_lite0.model_dump() == lite0.model_dump()


#: network keys at the last commit, before localisers existed (git show HEAD:src/breastfusion/experiment/crossval.py)
KEYS_BEFORE_LOCALISERS = {
    "bus_clinical.yaml": {"clinical": "2035337fbc376f0f", "ultrasound": "4c877cc572fa1dcb",
                          "fused": "4c877cc572fa1dcb", "fused_network": "d0ad8249a0c3d67b"},
    "bus_clinical_roi.yaml": {"clinical": "2035337fbc376f0f", "ultrasound": "ac58066158fe54db",
                              "fused": "ac58066158fe54db", "fused_network": "6d51e59b4e68ea17"},
}


@pytest.mark.parametrize("name", sorted(KEYS_BEFORE_LOCALISERS))
def test_networks_without_a_localiser_keep_their_keys(name):
    config = load_config(CONFIGS / name)
    assert {v: crossval.network_spec(config, v).key for v in config.variants} == KEYS_BEFORE_LOCALISERS[name]


def test_a_localiser_setting_is_part_of_the_network_key():
    localised = load_config(CONFIGS / "bus_clinical_localised.yaml")
    longer = localised.model_copy(update={"model": localised.model.model_copy(update={
        "ultrasound": localised.model.ultrasound.model_copy(update={
            "localiser": localised.model.ultrasound.localiser.model_copy(update={"epochs": 31})})})})
    key = crossval.network_spec(localised, "ultrasound").key
    assert key != crossval.network_spec(longer, "ultrasound").key
    assert key != KEYS_BEFORE_LOCALISERS["bus_clinical_roi.yaml"]["ultrasound"]


# -- a cross-validated run -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def localised_run(small_cohort_dir, tmp_path_factory):
    """A 2-fold run of the localised ultrasound network (with an inner validation split), recording each fold
    localiser's fitting positions and the images each network dataset was given."""
    config = tiny_config(training={"epochs": 1, "batch_size": 16, "val_fraction": 0.25})
    return recorded_run(small_cohort_dir, config, tmp_path_factory.mktemp("localised") / "run")


def recorded_run(cohort_dir: Path, config, out: Path) -> dict:
    """Run ``config`` on the cohort at ``cohort_dir`` into ``out``, recording each localiser fit (``fitted``: its
    positions, modality, settings, seed) and the ultrasound images each network dataset was given (``datasets``)."""
    from breastfusion.experiment.run import run_experiment

    fitted, datasets = [], []
    real_fit, real_dataset = crossval.fit_fold_localiser, crossval.LesionDataset

    def fit_fold_localiser(cohort, frames, positions, modality, cfg, **kwargs):
        fitted.append({"positions": np.array(positions), "modality": modality, "cfg": cfg, **kwargs})
        return real_fit(cohort, frames, positions, modality, cfg, **kwargs)

    def lesion_dataset(images, idx, *args, **kwargs):
        datasets.append({"images": images.images["ultrasound"].clone(), "idx": np.array(idx),
                         "with_masks": kwargs.get("with_masks")})
        return real_dataset(images, idx, *args, **kwargs)

    cohort = load_cohort(cohort_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crossval, "fit_fold_localiser", fit_fold_localiser)
        patch.setattr(crossval, "LesionDataset", lesion_dataset)
        run_experiment(cohort, config, out)
    return {"dir": out, "config": config, "cohort": cohort, "folds": crossval.fold_positions(cohort, config)[0],
            "fitted": fitted, "datasets": datasets}


def test_each_fold_localiser_learns_from_that_folds_fitting_lesions_only(localised_run):
    folds, fitted = localised_run["folds"], localised_run["fitted"]
    assert len(fitted) == len(folds) == 2
    for fold, call in zip(folds, fitted):
        assert call["modality"] == "ultrasound" and call["cfg"] == LocaliserConfig(**LOCALISER)
        positions = set(call["positions"].tolist())
        assert not positions & set(fold.test.tolist())
        assert not positions & set(fold.validation.tolist())
        assert positions == set(fold.fit.tolist())
    assert fitted[0]["seed"] != fitted[1]["seed"]
    # the fitted localisers are kept with the run's checkpoints, one per fold
    saved = sorted((localised_run["dir"] / "checkpoints" / "localisers").glob("ultrasound-*/*.safetensors"))
    assert len(saved) == 2


def _fold_and_split(folds, idx: np.ndarray) -> tuple[int, str]:
    for k, fold in enumerate(folds):
        for split, positions in (("fit", fold.fit), ("test", fold.test), ("validation", fold.validation)):
            if set(idx.tolist()) == set(positions.tolist()):
                return k, split
    raise AssertionError(f"positions {idx} are no split of any fold")


def test_the_networks_fit_on_reader_mask_crops_and_are_tested_on_localiser_crops(localised_run):
    cohort, folds = localised_run["cohort"], localised_run["folds"]
    boxes = pd.read_csv(localised_run["dir"] / "localiser_boxes.csv", dtype={"lesion_id": str})
    manifest = cohort.manifest[cohort.manifest["modality"] == "ultrasound"].set_index("lesion_id")
    position = {lid: i for i, lid in enumerate(cohort.lesions["lesion_id"])}
    assert manifest.index.is_unique  # one ultrasound image per lesion: view slot 0
    reader_crops, predicted_crops = {}, {}
    for lesion_id, row in manifest.iterrows():
        image = read_image(row["path"])
        reader_crops[position[lesion_id]] = preprocess(image, READER,
                                                       roi_mask=read_mask(roi_inputs(row, cohort.root)[0])).pixels
        for _, b in boxes[boxes["lesion_id"] == lesion_id].iterrows():
            predicted_crops[position[lesion_id], int(b["fold"])] = preprocess(
                image, PREDICTED, roi=tuple(int(b[c]) for c in ("top", "left", "bottom", "right"))).pixels

    seen = set()
    for call in localised_run["datasets"]:
        k, split = _fold_and_split(folds, call["idx"])
        seen.add((k, split))
        assert call["with_masks"] == (split == "fit")
        for i in call["idx"]:
            got = call["images"][i, 0, 0].numpy()
            want = reader_crops[i] if split == "fit" else predicted_crops[i, k]
            np.testing.assert_array_equal(got, want, err_msg=f"fold {k} {split} lesion position {i}")
    assert seen == {(k, split) for k in range(2) for split in ("fit", "test", "validation")}
    for k, fold in enumerate(folds):
        # a held-out image's crop is the localiser's, not its reader's (2 epochs of training find few lesions)
        held_out = np.concatenate([fold.test, fold.validation])
        assert sum(not np.array_equal(predicted_crops[i, k], reader_crops[i]) for i in held_out) > len(held_out) / 2


def test_the_run_records_each_held_out_images_box_and_the_localisation_quality(localised_run):
    cohort, folds, out = localised_run["cohort"], localised_run["folds"], localised_run["dir"]
    boxes = pd.read_csv(out / "localiser_boxes.csv", dtype={"lesion_id": str})
    assert {"path", "lesion_id", "top", "left", "bottom", "right", "iou", "modality", "repeat", "fold",
            "split"} <= set(boxes.columns)
    ids = cohort.lesions["lesion_id"].to_numpy()
    n_ultrasound = int((cohort.manifest["modality"] == "ultrasound").sum())
    test = boxes[boxes["split"] == "test"]
    assert len(test) == n_ultrasound == len(cohort.lesions)
    assert test["lesion_id"].is_unique and set(test["lesion_id"]) == set(ids)
    for k, fold in enumerate(folds):
        rows = boxes[boxes["fold"] == k]
        assert set(rows.loc[rows["split"] == "test", "lesion_id"]) == set(ids[fold.test])
        assert set(rows.loc[rows["split"] == "validation", "lesion_id"]) == set(ids[fold.validation])
        assert not set(rows["lesion_id"]) & set(ids[fold.fit])       # the localiser's own training lesions: no box
    assert (boxes["modality"] == "ultrasound").all() and (boxes["repeat"] == 0).all()
    assert ((boxes["top"] < boxes["bottom"]) & (boxes["left"] < boxes["right"]) & (boxes["top"] >= 0)
            & (boxes["left"] >= 0)).all()
    assert boxes["iou"].between(0, 1).all()                            # every image has a mask: no NaN
    summary = json.loads((out / "results.json").read_text())["localisation"]
    assert set(summary) == {"ultrasound"}
    assert summary["ultrasound"]["n_images"] == n_ultrasound
    assert summary["ultrasound"]["median_iou"] == pytest.approx(float(test["iou"].median()))
    assert 0 <= summary["ultrasound"]["median_iou"] <= 1
    assert summary["ultrasound"]["share_iou_at_least_0.5"] == pytest.approx(float((test["iou"] >= 0.5).mean()))
    assert json.loads((out / "preprocessing.json").read_text())["params"]["ultrasound"]["roi"] == "predicted"


def test_a_reloaded_run_reproduces_its_predictions(localised_run):
    from breastfusion.experiment.run_artifacts import load_run

    saved = pd.read_csv(localised_run["dir"] / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    saved = saved[saved["variant"] == "ultrasound"].set_index("lesion_id")
    again = load_run(localised_run["dir"]).predict("ultrasound").set_index("lesion_id")
    assert len(again) == len(saved) == len(localised_run["cohort"].lesions)
    again = again.loc[saved.index]
    assert (again["fold"].to_numpy() == saved["fold"].to_numpy()).all()
    np.testing.assert_allclose(again["prob"].to_numpy(), saved["prob"].to_numpy(), atol=1e-6)


def test_a_reloaded_runs_lesion_masks_lie_over_the_localiser_crop_of_the_test_fold(localised_run):
    from breastfusion.data.preprocess import align_mask
    from breastfusion.experiment.run_artifacts import load_run

    art = load_run(localised_run["dir"])
    boxes = pd.read_csv(localised_run["dir"] / "localiser_boxes.csv", dtype={"lesion_id": str})
    boxes = boxes[boxes["split"] == "test"].set_index("lesion_id")
    for fold in localised_run["folds"]:
        for position in fold.test[:3]:
            row = art.image_rows(int(position), "ultrasound").iloc[0]
            b = boxes.loc[art.lesions["lesion_id"].iat[int(position)]]
            prepared = preprocess(read_image(row["path"]), PREDICTED,
                                  roi=tuple(int(b[c]) for c in ("top", "left", "bottom", "right")))
            mask = read_mask(roi_inputs(row, art.cohort.root)[0])
            want = align_mask(mask, prepared, PREDICTED) >= 0.5
            got = art.lesion_mask(int(position), "ultrasound", 0)
            if want.any():
                np.testing.assert_array_equal(got, want)
            else:  # the box missed the lesion: no mask pixel in the crop, nothing to score heatmaps against
                assert got is None


def test_a_rerun_reuses_the_saved_localisers_and_reproduces_the_run(localised_run, tmp_path, monkeypatch):
    assert_a_rerun_reuses_every_localiser(localised_run, tmp_path, monkeypatch)


def assert_a_rerun_reuses_every_localiser(run: dict, tmp_path: Path, monkeypatch) -> None:
    """A copy of the recorded ``run`` (:func:`recorded_run`), run again with its boxes file deleted, fits no
    localiser and writes the same predictions and boxes."""
    from breastfusion.experiment.run import run_experiment

    out = Path(shutil.copytree(run["dir"], tmp_path / "run"))
    before = {name: pd.read_csv(out / name) for name in ("predictions.csv", "localiser_boxes.csv")}
    (out / "localiser_boxes.csv").unlink()

    def refit(*args, **kwargs):
        raise AssertionError("a saved localiser was fitted again")

    monkeypatch.setattr(crossval, "fit_fold_localiser", refit)
    run_experiment(run["cohort"], run["config"], out)
    for name, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / name), frame)


# -- the exported bundle ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_dir(localised_run, tmp_path_factory) -> Path:
    from breastfusion import export_bundle

    return export_bundle(localised_run["dir"], tmp_path_factory.mktemp("bundles") / "localised")


def test_the_bundle_keeps_every_fold_localiser(bundle_dir, localised_run):
    from breastfusion import load_bundle
    from breastfusion.experiment.run_artifacts import load_run

    files = json.loads((bundle_dir / "bundle.json").read_text())["files"]
    assert {f"localiser_ultrasound_fold{k}.safetensors" for k in range(2)} <= set(files)
    assert all((bundle_dir / f"localiser_ultrasound_fold{k}.safetensors").is_file() for k in range(2))
    bundle = load_bundle(bundle_dir)
    assert set(bundle.localisers) == {"ultrasound"} and len(bundle.localisers["ultrasound"]) == bundle.n_folds == 2
    run = load_run(localised_run["dir"])
    for k, model in enumerate(bundle.localisers["ultrasound"]):
        assert not model.training
        ours, theirs = model.state_dict(), run.localiser("ultrasound", k).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
    a, b = (m.state_dict() for m in bundle.localisers["ultrasound"])
    assert not all(torch.equal(a[n], b[n]) for n in a)      # two folds, two different localisers


def test_the_bundle_crops_a_new_image_to_the_mean_of_its_fold_localisers_maps(bundle_dir, small_cohort_dir):
    from breastfusion import load_bundle
    from breastfusion.predict import localised_images

    bundle = load_bundle(bundle_dir)
    cohort = load_cohort(small_cohort_dir)
    images = localised_images(bundle, cohort).images["ultrasound"]
    settings = bundle.config.model.ultrasound.localiser
    models = bundle.localisers["ultrasound"]
    rows = cohort.manifest[cohort.manifest["modality"] == "ultrasound"].head(6)
    position = {lid: i for i, lid in enumerate(cohort.lesions["lesion_id"])}
    single_fold_differs = 0
    for _, row in rows.iterrows():
        image = read_image(row["path"])
        frame = preprocess(image, params_for("ultrasound", size=settings.image_size))
        maps = [predict_lesion_probs(m, frame.pixels[None])[0] for m in models]
        box = frame_box_to_image(box_from_probs(np.mean(maps, axis=0), settings.threshold), frame.crop,
                                 settings.image_size)
        want = preprocess(image, bundle.preprocessing["ultrasound"], roi=box).pixels
        np.testing.assert_array_equal(images[position[row["lesion_id"]], 0, 0].numpy(), want)
        fold0 = frame_box_to_image(box_from_probs(maps[0], settings.threshold), frame.crop, settings.image_size)
        single_fold_differs += fold0 != box
    assert bundle.preprocessing["ultrasound"].roi == "predicted"
    assert single_fold_differs > 0    # so the check tells the folds' mean from one fold's localiser


def test_the_bundle_predicts_without_masks_and_in_memory(bundle_dir, small_cohort_dir, tmp_path):
    from breastfusion import load_bundle

    bundle = load_bundle(bundle_dir)
    with_masks = bundle.predict(small_cohort_dir)
    unmarked = _blank_masks(small_cohort_dir, tmp_path / "unmarked")
    assert pd.read_csv(unmarked / "manifest.csv").query("modality == 'ultrasound'")["mask_path"].isna().all()
    without = bundle.predict(unmarked)
    assert len(with_masks) == len(without) == 60
    assert (with_masks["subject_id"].to_numpy() == without["subject_id"].to_numpy()).all()
    np.testing.assert_allclose(without["prob"].to_numpy(), with_masks["prob"].to_numpy(), atol=1e-6)
    assert with_masks["prob"].between(0, 1).all() and with_masks["prob"].std() > 0

    cohort = load_cohort(small_cohort_dir)
    row = cohort.manifest[cohort.manifest["modality"] == "ultrasound"].iloc[0]
    pixels = np.asarray(Image.open(row["path"]))
    case = bundle.predict(images={"ultrasound": pixels})
    assert len(case) == 1
    expected = with_masks.set_index("subject_id").loc[str(row["subject_id"]), "prob"]
    assert case["prob"].iloc[0] == pytest.approx(expected, abs=1e-6)


def test_a_bundle_with_an_altered_localiser_is_refused_naming_it(bundle_dir, tmp_path):
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    assert_bundle_refuses_a_changed_then_a_missing(copy, "localiser_ultrasound_fold1.safetensors",
                                                   r"localiser_ultrasound_fold1\.safetensors: sha256 .* differs")


# -- clear errors ----------------------------------------------------------------------------------------------------


def test_cross_validation_names_an_image_without_a_mask(small_cohort_dir, tmp_path):
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv")
    blank = manifest.index[manifest["modality"] == "ultrasound"][[3]]
    root = _blank_masks(small_cohort_dir, tmp_path / "cohort", blank)
    path = manifest.loc[blank[0], "path"]
    with pytest.raises(LocalisationError, match=rf"1 of 60 have none: \S*{re.escape(path)}") as info:
        crossval.cross_validate(load_cohort(root), tiny_config())
    assert "mask_path" in str(info.value)


def test_the_ray_executor_is_refused_with_a_predicted_roi(small_cohort_dir):
    config = tiny_config(execution={"executor": "ray"})   # a valid config, ray installed or not
    assert config.execution.executor == "ray"
    with pytest.raises(ValueError, match=r"executor 'ray'.*executor: local"):
        crossval.cross_validate(load_cohort(small_cohort_dir), config)


def test_a_fused_network_with_a_localised_ultrasound_branch_runs(small_cohort_dir):
    cv = crossval.cross_validate(load_cohort(small_cohort_dir),
                                 tiny_config(variants={"fused": ["ultrasound", "clinical"]}))
    assert len(cv.predictions) == 60 and cv.predictions["prob"].between(0, 1).all()
    assert len(cv.localiser_boxes) == 60 and (cv.localiser_boxes["split"] == "test").all()


# -- views: crop_and_frame -------------------------------------------------------------------------------------------


def test_append_views_puts_the_extra_slots_after_the_images_own_and_keeps_their_masks():
    from breastfusion.data.tensors import LesionImages, append_views

    crops = torch.randint(0, 255, (3, 1, 1, 4, 4), dtype=torch.uint8)
    frames = torch.randint(0, 255, (3, 1, 1, 4, 4), dtype=torch.uint8)
    have = torch.tensor([[True], [True], [False]])
    masks = torch.full((3, 1, 1, 4, 4), 7, dtype=torch.uint8)
    a = LesionImages(["a", "b", "c"], {"ultrasound": crops}, {"ultrasound": have}, masks={"ultrasound": masks},
                     mask_views={"ultrasound": have.clone()})
    b = LesionImages(["a", "b", "c"], {"ultrasound": frames}, {"ultrasound": have}, excluded=["x.png"])
    both = append_views(a, b, "ultrasound")
    assert both.images["ultrasound"].shape == (3, 2, 1, 4, 4)
    stack = both.images["ultrasound"]
    assert torch.equal(stack[:, :1], crops) and torch.equal(stack[:, 1:], frames)
    assert torch.equal(both.views["ultrasound"], torch.cat([have, have], dim=1))
    assert torch.equal(both.masks["ultrasound"][:, :1], masks) and not both.masks["ultrasound"][:, 1].any()
    assert torch.equal(both.mask_views["ultrasound"][:, 0], have[:, 0])
    assert not both.mask_views["ultrasound"][:, 1].any()
    assert both.excluded == ["x.png"]
    with pytest.raises(ValueError, match="same lesions"):
        append_views(a, LesionImages(["c", "b", "a"], {"ultrasound": frames}, {"ultrasound": have}), "ultrasound")


def test_crop_and_frame_gives_the_network_each_crop_and_its_whole_frame_in_the_run_and_the_bundle(
        small_cohort_dir, tmp_path):
    from breastfusion import export_bundle, load_bundle
    from breastfusion.experiment.run import run_experiment
    from breastfusion.experiment.run_artifacts import load_run

    model = {**MODEL, "ultrasound": {**MODEL["ultrasound"], "localiser": {**LOCALISER, "views": "crop_and_frame"}}}
    config = load_config(None, name="tiny_crop_and_frame", variants={"ultrasound": ["ultrasound"]}, model=model,
                         training={"epochs": 1, "batch_size": 16}, cv={"n_splits": 2, "bootstrap": 100})
    cohort = load_cohort(small_cohort_dir)
    seen = []
    real_dataset = crossval.LesionDataset

    def lesion_dataset(images, idx, *args, **kwargs):
        seen.append((images.images["ultrasound"].clone(), images.views["ultrasound"].clone(), np.array(idx)))
        return real_dataset(images, idx, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crossval, "LesionDataset", lesion_dataset)
        run_experiment(cohort, config, tmp_path / "run")
    whole = params_for("ultrasound", size=32)
    manifest = cohort.manifest[cohort.manifest["modality"] == "ultrasound"].set_index("lesion_id")
    frames = {i: preprocess(read_image(manifest.loc[lid, "path"]), whole).pixels
              for i, lid in enumerate(cohort.lesions["lesion_id"])}
    assert seen
    for stack, views, idx in seen:
        assert stack.shape[1] == 2 and bool(views[idx].all())          # slot 0: the crop, slot 1: the whole frame
        for i in idx:
            np.testing.assert_array_equal(stack[i, 1, 0].numpy(), frames[i])
        # a box widened past the frame leaves its image whole; most are cropped
        assert sum(not np.array_equal(stack[i, 0, 0].numpy(), frames[i]) for i in idx) > len(idx) / 2
    art = load_run(tmp_path / "run")
    saved = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype={"lesion_id": str}).set_index("lesion_id")
    again = art.predict("ultrasound").set_index("lesion_id").loc[saved.index]
    np.testing.assert_allclose(again["prob"].to_numpy(), saved["prob"].to_numpy(), atol=1e-6)
    # the whole-frame slot's lesion mask is the whole frame's, for heatmap faithfulness
    row = art.image_rows(0, "ultrasound").iloc[0]
    image, mask = read_image(row["path"]), read_mask(roi_inputs(row, art.cohort.root)[0])
    from breastfusion.data.preprocess import align_mask

    want = align_mask(mask, preprocess(image, whole), whole) >= 0.5
    np.testing.assert_array_equal(art.lesion_mask(0, "ultrasound", 1), want)

    bundle = load_bundle(export_bundle(tmp_path / "run", tmp_path / "bundle"))
    unmarked = _blank_masks(small_cohort_dir, tmp_path / "unmarked")
    with_masks = bundle.predict(small_cohort_dir).set_index("subject_id")["prob"]
    without = bundle.predict(unmarked).set_index("subject_id")["prob"]
    np.testing.assert_allclose(without.loc[with_masks.index].to_numpy(), with_masks.to_numpy(), atol=1e-6)
    first = manifest.iloc[0]
    one = bundle.predict(images={"ultrasound": np.asarray(Image.open(first["path"]).convert("L"))})
    assert one["prob"].iloc[0] == pytest.approx(with_masks.loc[first["subject_id"]], abs=1e-5)

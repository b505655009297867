"""configs/bus_clinical_roi.yaml: the lesion-ROI recipe is bus_clinical.yaml plus a crop to the marked lesion."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from breastfusion.config import load_config
from breastfusion.data.cache import preprocess_cohort
from breastfusion.data.manifest import load_cohort
from breastfusion.data.readers import ImageReadError
from breastfusion.experiment.crossval import preprocessing_params

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_roi_config_is_the_scratch_config_with_a_half_box_margin_crop():
    roi, whole = load_config(CONFIGS / "bus_clinical_roi.yaml"), load_config(CONFIGS / "bus_clinical.yaml")
    assert roi.model.ultrasound.preprocess == {"roi": "mask", "roi_margin": 0.5}
    # everything else (encoder, schedule, folds, variants) is the whole-image recipe's, so the two compare fairly
    as_whole = roi.model_copy(update={"name": whole.name, "model": roi.model.model_copy(update={
        "ultrasound": roi.model.ultrasound.model_copy(update={"preprocess": {}})})})
    assert as_whole.model_dump() == whole.model_dump()


def test_roi_config_crops_ultrasound_to_the_lesion_and_names_an_image_without_a_mask(small_cohort_dir, tmp_path):
    root = tmp_path / "cohort"
    shutil.copytree(small_cohort_dir, root)
    roi = preprocessing_params(load_config(CONFIGS / "bus_clinical_roi.yaml"), ["ultrasound"])
    whole = preprocessing_params(load_config(CONFIGS / "bus_clinical.yaml"), ["ultrasound"])
    cropped = preprocess_cohort(load_cohort(root), roi).arrays
    full = preprocess_cohort(load_cohort(root), whole).arrays
    assert cropped.keys() == full.keys() and len(cropped) > 10     # every ultrasound image, none dropped
    assert all(cropped[p].shape == full[p].shape == (128, 128) for p in cropped)
    # a lesion whose widened box covers the frame leaves its image as it was; most are cropped
    changed = [p for p in cropped if not np.array_equal(cropped[p], full[p])]
    assert len(changed) > len(cropped) / 2
    manifest = pd.read_csv(root / "manifest.csv")
    blank = manifest.index[manifest["modality"] == "ultrasound"][0]
    manifest.loc[blank, "mask_path"] = ""
    manifest.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(ImageReadError, match=rf"{manifest.loc[blank, 'path']}: roi='mask' but no mask"):
        preprocess_cohort(load_cohort(root), roi)


def test_an_roi_bundle_predicts_marked_cases_names_an_unmarked_image_and_refuses_in_memory_cases(
        small_cohort_dir, tmp_path):
    from breastfusion import export_bundle, load_bundle
    from breastfusion.data.in_memory import InMemoryCaseError
    from breastfusion.experiment.run import run_experiment

    from .conftest import TINY_MODEL

    model = {**TINY_MODEL, "ultrasound": {**TINY_MODEL.get("ultrasound", {}),
                                          "preprocess": {"roi": "mask", "roi_margin": 0.5}}}
    config = load_config(None, name="tiny_roi", variants={"ultrasound": ["ultrasound"]}, model=model,
                         training={"epochs": 1, "batch_size": 16}, cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(small_cohort_dir), config, tmp_path / "run")
    bundle = load_bundle(export_bundle(tmp_path / "run", tmp_path / "bundle"))
    assert bundle.preprocessing["ultrasound"].roi == "mask"
    predicted = bundle.predict(small_cohort_dir)
    assert len(predicted) == len(load_cohort(small_cohort_dir).lesions) and predicted["prob"].between(0, 1).all()

    root = Path(shutil.copytree(small_cohort_dir, tmp_path / "unmarked"))
    manifest = pd.read_csv(root / "manifest.csv")
    blank = manifest.index[manifest["modality"] == "ultrasound"][0]
    manifest.loc[blank, "mask_path"] = ""
    manifest.to_csv(root / "manifest.csv", index=False)
    with pytest.raises(ImageReadError, match=rf"{manifest.loc[blank, 'path']}: roi='mask' but no mask"):
        bundle.predict(root)
    with pytest.raises(InMemoryCaseError, match="lesion ROI"):
        bundle.predict(images={"ultrasound": {"frame1": np.zeros((64, 64), np.uint8)}})

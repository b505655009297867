"""Reloading a run folder: the fold networks, folds and preprocessing are exactly the run's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from breastfusion.config import load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.experiment.run_artifacts import RunArtifacts, RunFolderError, load_run

from ..conftest import TINY_MODEL


def test_reloaded_fold_networks_reproduce_the_out_of_fold_predictions(tiny_run):
    art = load_run(tiny_run)
    recomputed = art.predict("fused")
    saved = art.predictions[art.predictions["variant"] == "fused"].set_index("lesion_id").loc[recomputed["lesion_id"]]
    np.testing.assert_allclose(recomputed["prob"], saved["prob"], atol=1e-6)
    # each lesion is explained by the fold whose network held it out, never one that trained on it
    assert (recomputed["fold"].to_numpy() == saved["fold"].to_numpy()).all()
    for k in range(art.n_folds):
        assert not set(art.folds[k][1]) & set(art.fit_positions(k))
    sid = recomputed["subject_id"].iloc[7]
    assert art.fold_of(sid) == int(saved["fold"].iloc[7])


def test_errors_name_what_is_wrong(run_copy):
    art = load_run(run_copy)
    with pytest.raises(KeyError, match="not in the cohort"):
        art.fold_of("nobody")
    with pytest.raises(KeyError, match=r"unknown variant 'us'.*\['fused'\]"):
        art.network("us", 0)
    (run_copy / "checkpoints" / "fused" / "fold1.safetensors").unlink()
    with pytest.raises(RunFolderError, match="no checkpoint"):
        art.network("fused", 1)
    results = json.loads((run_copy / "results.json").read_text())
    results["manifest_sha256"] = "0" * 64
    (run_copy / "results.json").write_text(json.dumps(results))
    with pytest.raises(RunFolderError, match="cannot find the run's cohort"):
        load_run(run_copy)
    with pytest.raises(RunFolderError, match="config.yaml is missing"):
        load_run(run_copy / "checkpoints")


def test_lesion_masks_follow_the_images_crop_flip_and_resize(small_cohort_dir, tmp_path):
    """With the mask itself as the image, the preprocessed image and the aligned mask coincide."""
    manifest = pd.read_csv(small_cohort_dir / "manifest.csv").head(12)
    for path in manifest["mask_path"]:
        (tmp_path / path).parent.mkdir(exist_ok=True)
        mask = np.asarray(Image.open(small_cohort_dir / path))
        Image.fromarray(mask[:, ::-1].copy()).save(tmp_path / path)  # chest wall side swapped: forces a flip
    manifest["path"] = manifest["mask_path"]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    cohort = load_cohort(tmp_path)
    # Overlay suppression would erase parts of a binary image (it is made for text); the geometry is under test.
    model = {**TINY_MODEL, "ultrasound": {**TINY_MODEL["ultrasound"], "preprocess": {"suppress_overlays": False}}}
    config = load_config(None, manifest=tmp_path, variants={"both": ["mammography", "ultrasound"]}, model=model,
                         cache=False)
    art = RunArtifacts(root=tmp_path, config=config, cohort=cohort, results={}, predictions=pd.DataFrame(),
                       lesions=cohort.lesions, folds=[])
    checked = 0
    for pos in range(len(art.lesions)):
        for modality in ("mammography", "ultrasound"):
            for slot in np.flatnonzero(art.images.views[modality][pos].numpy()):
                image = art.images.images[modality][pos, slot, 0].numpy() >= 128
                mask = art.lesion_mask(pos, modality, int(slot))
                iou = (image & mask).sum() / (image | mask).sum()
                assert mask.shape == image.shape and iou > 0.97, (pos, modality, slot, iou)
                checked += 1
    assert checked == len(manifest)

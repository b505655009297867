"""Synthetic lesion masks: written beside every image, without changing a single image pixel."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from breastfusion.data.synthetic.cohort import MASK_COLUMN, generate_cohort

#: sha256 of the decoded pixels of generate_cohort(n_subjects=12, seed=5, image_px=64, us_frames=2,
#: missing_rate=0.2), computed with the generator as it was before masks existed (commit b3b0966).
REFERENCE_PIXELS_SHA256 = "f0735595713539f09d4acad49cc292deb68eb488220842113d376aca3abe33db"
PARAMS = dict(n_subjects=12, seed=5, image_px=64, us_frames=2, missing_rate=0.2)


def _pixel_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((root / "images").glob("*.png")):
        digest.update(path.name.encode())
        digest.update(np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


def test_masks_change_no_image_and_no_random_draw(tmp_path):
    with_masks = generate_cohort(tmp_path / "a", **PARAMS)
    without = generate_cohort(tmp_path / "b", masks=False, **PARAMS)
    assert _pixel_hash(tmp_path / "a") == _pixel_hash(tmp_path / "b") == REFERENCE_PIXELS_SHA256
    for name in (p.name for p in (tmp_path / "b" / "images").glob("*.png")):
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()
    pd.testing.assert_frame_equal(with_masks.truth, without.truth)
    pd.testing.assert_frame_equal(with_masks.clinical, without.clinical)
    assert MASK_COLUMN not in without.manifest and not (tmp_path / "b" / "masks").exists()


def test_every_image_has_a_lesion_mask_of_its_size(tmp_path):
    cohort = generate_cohort(tmp_path, **PARAMS)
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert manifest[MASK_COLUMN].notna().all() and len(manifest) == len(cohort.manifest)
    for row in manifest.itertuples():
        image = np.asarray(Image.open(tmp_path / row.path))
        mask = np.asarray(Image.open(tmp_path / getattr(row, MASK_COLUMN)))
        assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 255}
        fraction = (mask > 0).mean()
        assert 0.002 < fraction < 0.5, (row.path, fraction)
        if row.modality == "ultrasound":  # the lesion is hypoechoic: darker inside the mask than around it
            assert image[mask > 0].mean() < image[mask == 0].mean()

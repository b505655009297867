"""bench/localiser_quality.py's inputs: each image's localiser frame, its mask on that frame and the reader's box."""

from __future__ import annotations

import numpy as np
from PIL import Image

from breastfusion.data.manifest import load_cohort
from breastfusion.data.preprocess import params_for

from .bench_scripts import load_bench


def test_localiser_inputs_align_each_mask_with_its_frame_and_box(small_cohort_dir):
    quality = load_bench("localiser_quality")
    manifest = load_cohort(small_cohort_dir).manifest
    rows = manifest[manifest["modality"] == "ultrasound"].head(6)
    paths = [str(small_cohort_dir / p) for p in rows["path"]]
    masks = [[str(small_cohort_dir / m)] for m in rows["mask_path"]]
    frames, frame_masks, crops, truth = quality.localiser_inputs(paths, masks, params_for("ultrasound", size=48))
    assert frames.shape[:3] == (6, 48, 48) and frame_masks.shape == (6, 48, 48) and frame_masks.dtype == np.uint8
    assert len(crops) == 6
    for mask_files, frame_mask, box in zip(masks, frame_masks, truth):
        assert frame_mask.max() == 255 and frame_mask.mean() < 255  # the lesion is on its frame, not all of it
        r, c = np.nonzero(np.asarray(Image.open(mask_files[0])) > 0)
        assert box == (r.min(), c.min(), r.max() + 1, c.max() + 1)  # the reader's box on the image itself


"""bench/plain_baselines.py: the plain scripts the real-data bench compares against are honest out-of-fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from .bench_scripts import load_bench


def test_plain_clinical_model_is_out_of_fold_and_blind_to_test_labels():
    plain = load_bench("plain_baselines")
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, n)
    table = pd.DataFrame({"age": rng.normal(50, 10, n) + 8 * y, "tissue": rng.choice(["a", "b", None], n)})
    table.loc[3, "age"] = np.nan
    folds = [(np.setdiff1d(np.arange(n), idx), idx) for idx in np.array_split(rng.permutation(n), 4)]
    prob = plain.plain_clinical_probs(table, y, folds)
    assert np.isfinite(prob).all() and prob.shape == (n,)
    flipped = y.copy()
    flipped[folds[0][1]] = 1 - flipped[folds[0][1]]
    again = plain.plain_clinical_probs(table, flipped, folds)
    assert np.allclose(prob[folds[0][1]], again[folds[0][1]])
    assert np.allclose(plain.plain_average(np.array([0.2, 0.6]), np.array([0.4, 1.0])), [0.3, 0.8])


def test_plain_cnn_predicts_every_held_out_image_once():
    plain = load_bench("plain_baselines")
    images = torch.rand(12, 1, 16, 16)
    y = np.array([0, 1] * 6)
    folds = [(np.arange(6, 12), np.arange(6)), (np.arange(6), np.arange(6, 12))]
    prob = plain.plain_cnn_probs(images, y, folds, arch="test_resnet", epochs=1)
    assert prob.shape == (12,) and np.isfinite(prob).all() and ((prob > 0) & (prob < 1)).all()


def test_plain_roi_crop_is_the_mask_box_widened_by_the_margin(tmp_path):
    from PIL import Image

    plain = load_bench("plain_baselines")
    image = np.zeros((40, 60), np.uint8)
    image[10:20, 20:40] = 200                       # the lesion: rows 10-19, cols 20-39
    mask = np.zeros_like(image)
    mask[10:20, 20:40] = 255
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    tight = plain.load_roi_images([str(tmp_path / "a.png")], [[str(tmp_path / "a_mask.png")]], 8, margin=0.0)
    assert tight.shape == (1, 1, 8, 8) and float(tight.min()) > 0.7   # only lesion pixels
    wide = plain.load_roi_images([str(tmp_path / "a.png")], [[str(tmp_path / "a_mask.png")]], 16, margin=0.5)
    # box widened by 5 rows and 10 columns a side: the lesion fills the middle half of each axis
    assert float(wide[0, 0, 8, 8]) > 0.7 and float(wide[0, 0, 0, 0]) == 0.0 and float(wide[0, 0, 8, 1]) < 0.1
    Image.fromarray(np.zeros_like(mask)).save(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"a\.png.*no lesion pixel"):
        plain.load_roi_images([str(tmp_path / "a.png")], [[str(tmp_path / "empty.png")]], 8, margin=0.0)

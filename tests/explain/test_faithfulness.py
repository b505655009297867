"""Energy in mask, pointing game, random baseline and deletion / insertion on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breastfusion.explain.faithfulness import (deletion_insertion, energy_in_mask, pointing_game, pointing_tolerance,
                                               random_heatmap)


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((32, 32), bool)
    m[8:16, 10:20] = True
    return m


def test_a_heatmap_that_is_the_mask_scores_one(mask):
    assert energy_in_mask(mask.astype(float), mask) == 1.0
    assert pointing_game(mask.astype(float), mask, tolerance=0) == 1.0


def test_a_uniform_heatmap_scores_the_mask_area_and_points_nowhere(mask):
    flat = np.ones(mask.shape)
    assert energy_in_mask(flat, mask) == pytest.approx(mask.mean())
    assert pointing_game(flat, mask) == 0.0


def test_pointing_tolerance(mask):
    heat = np.zeros(mask.shape)
    heat[8, 23] = 1.0  # 4 px right of the lesion
    assert pointing_game(heat, mask, tolerance=0) == 0.0
    assert pointing_game(heat, mask, tolerance=4) == 1.0
    assert pointing_tolerance(224) == 15 and pointing_tolerance(64) == 4


def test_random_heatmaps_score_about_the_mask_area(mask):
    rng = np.random.default_rng(0)
    scores = [energy_in_mask(random_heatmap(mask.shape, rng), mask) for _ in range(300)]
    assert np.mean(scores) == pytest.approx(mask.mean(), abs=0.03)
    heat = random_heatmap(mask.shape, rng)
    assert heat.shape == mask.shape and heat.min() == 0 and heat.max() == pytest.approx(1.0)


@pytest.mark.parametrize("heat, mask_, message", [
    (np.ones((4, 4)), np.ones((4, 5), bool), "one shape"),
    (-np.ones((4, 4)), np.ones((4, 4), bool), "non-negative"),
])
def test_bad_inputs(heat, mask_, message):
    with pytest.raises(ValueError, match=message):
        energy_in_mask(heat, mask_)


def test_deletion_and_insertion_reward_the_pixels_the_model_uses(mask):
    """A model that reads only the lesion: its map beats a random order on both curves."""
    weight = torch.from_numpy(mask.astype(np.float32))

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((x[:, 0] * weight).sum((1, 2)) / weight.sum() * 4)

    image = weight[None].clone()  # a bright lesion on black: blurring dims it
    good = deletion_insertion(predict, image, mask.astype(float), steps=16)
    rand = deletion_insertion(predict, image, random_heatmap(mask.shape, np.random.default_rng(0)), steps=16)
    assert good["deletion_auc"] < rand["deletion_auc"] and good["insertion_auc"] > rand["insertion_auc"]
    assert good["deletion"][0] == pytest.approx(float(predict(image[None])))  # nothing deleted yet
    assert good["deletion"][-1] == pytest.approx(0.5)  # everything at the baseline (0): sigmoid(0)
    assert good["insertion"][-1] == pytest.approx(float(predict(image[None])))
    assert len(good["fraction"]) == 17


def test_centre_prior_peaks_in_the_middle_and_scores_a_centred_lesion():
    from breastfusion.explain.faithfulness import centre_heatmap

    heat = centre_heatmap((32, 48))
    assert heat.shape == (32, 48) and np.unravel_index(heat.argmax(), heat.shape) in {(15, 23), (15, 24), (16, 23), (16, 24)}
    centred, corner = np.zeros((32, 48), bool), np.zeros((32, 48), bool)
    centred[12:20, 20:28] = True
    corner[:8, :8] = True
    assert pointing_game(heat, centred, tolerance=0) == 1.0 and pointing_game(heat, corner, tolerance=0) == 0.0
    assert energy_in_mask(heat, centred) > centred.mean() > energy_in_mask(heat, corner)

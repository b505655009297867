"""Preprocessing: crop, flip, resize/pad, normalise, overlay suppression, ROI; parameters checked and recorded."""

from __future__ import annotations

import numpy as np
import pytest

from breastfusion.data.preprocess import (
    MammographyParams,
    PreprocessError,
    UltrasoundParams,
    params_for,
    preprocess,
    resize_pad,
)
from breastfusion.data.readers import ImageData

from .conftest import breast_phantom


def _image(pixels: np.ndarray, **kw) -> ImageData:
    return ImageData(pixels.astype(np.float32), 12, "test", **kw)


@pytest.mark.parametrize("modality, kwargs, pattern", [
    ("mammography", {"size": 4}, r"size should be an integer >= 8, got 4"),
    ("mammography", {"chest_wall": "up"}, r"chest_wall should be one of \['left', 'right', 'none'\], got 'up'"),
    ("ultrasound", {"normalise": "zscore"}, r"normalise should be one of \['percentile', 'minmax', 'none'\]"),
    ("ultrasound", {"percentiles": (90, 10)}, r"percentiles should satisfy 0 <= low < high <= 100"),
    ("ultrasound", {"roi": "circle"}, r"roi should be one of"),
    ("ultrasound", {"colour": True}, r"ultrasound preprocessing: .*unexpected keyword argument 'colour'"),
    ("mri", {}, r"modality should be one of \['mammography', 'ultrasound'\], got 'mri'"),
])
def test_bad_parameters_say_what_was_expected(modality, kwargs, pattern):
    with pytest.raises(PreprocessError, match=pattern):
        params_for(modality, **kwargs)


def test_parameters_are_recorded_as_plain_data():
    params = params_for("mammography", size=64)
    assert params.to_dict()["size"] == 64 and params.to_dict()["modality"] == "mammography"
    assert params.to_dict() != params_for("mammography", size=65).to_dict()


@pytest.mark.parametrize("side", ["L", "R"])
def test_mammogram_crop_drops_the_marker_and_flips_from_the_image_without_a_tag(side):
    pixels = breast_phantom(side=side) / 4095
    out = preprocess(_image(pixels), MammographyParams(size=64))
    assert out.laterality_from == "image" and out.flipped == (side == "R")
    top, left, bottom, right = out.crop
    assert right - left < pixels.shape[1] - 4  # the marker (a separate component) is not in the crop
    assert out.pixels[:, :32].sum() > 3 * out.pixels[:, 32:].sum()


def test_the_dicom_tag_wins_over_the_image():
    pixels = breast_phantom(side="L") / 4095
    assert preprocess(_image(pixels, laterality="R"), MammographyParams(size=32)).flipped
    assert not preprocess(_image(pixels, laterality="R"), MammographyParams(size=32, chest_wall="right")).flipped


def test_resize_pad_keeps_the_aspect_ratio():
    out = resize_pad(np.ones((100, 50), np.float32), 64)
    assert out.shape == (64, 64)
    columns = np.nonzero(out.sum(0))[0]
    assert columns.size == 32 and columns[0] == 16
    assert resize_pad(np.ones((100, 50), np.float32), 64, anchor="left")[:, :32].all()


def test_ultrasound_text_and_calipers_are_suppressed():
    rng = np.random.default_rng(0)
    tissue = np.clip(0.4 + 0.1 * rng.standard_normal((120, 160)), 0, 1)
    marked = tissue.copy()
    marked[100:104, 20:60] = 1.0  # a line of 'text'
    marked[50, 70:90] = 1.0  # a caliper
    marked[40:60, 80] = 1.0
    out = preprocess(_image(marked), UltrasoundParams(size=80, normalise="none", crop=False))
    clean = preprocess(_image(tissue), UltrasoundParams(size=80, normalise="none", crop=False))
    assert out.overlay_pixels >= 80
    assert np.abs(out.pixels.astype(int) - clean.pixels).max() < 80
    kept = preprocess(_image(marked), UltrasoundParams(size=80, normalise="none", crop=False, suppress_overlays=False))
    assert kept.pixels.max() > clean.pixels.max() + 60  # without suppression the marks stay


def test_ultrasound_crop_to_scan_area():
    canvas = np.zeros((200, 300), np.float32)
    canvas[40:180, 60:260] = 0.5
    canvas[5:10, 5:40] = 1.0  # text outside the scan area
    assert preprocess(_image(canvas), UltrasoundParams(size=32)).crop == (40, 60, 180, 260)


def test_roi_crop_from_mask_and_box():
    pixels = np.random.default_rng(1).random((100, 100)).astype(np.float32)
    mask = np.zeros((100, 100), bool)
    mask[40:60, 20:40] = True
    params = UltrasoundParams(size=32, roi="mask", roi_margin=0.5)
    assert preprocess(_image(pixels), params, roi_mask=mask).crop == (30, 10, 70, 50)
    assert preprocess(_image(pixels), UltrasoundParams(size=32, roi="box", roi_margin=0.0),
                      roi=(10, 10, 30, 50)).crop == (10, 10, 30, 50)
    with pytest.raises(PreprocessError, match=r"ROI mask of shape \(10, 10\) does not match its image \(100, 100\)"):
        preprocess(_image(pixels), params, roi_mask=np.ones((10, 10), bool))
    with pytest.raises(PreprocessError, match="no mask was given"):
        preprocess(_image(pixels), params)
    with pytest.raises(PreprocessError, match=r"ROI box \(0, 0, 200, 10\) is not inside"):
        preprocess(_image(pixels), UltrasoundParams(size=32, roi="box"), roi=(0, 0, 200, 10))


def test_preprocessing_is_deterministic():
    pixels = breast_phantom() / 4095
    a = preprocess(_image(pixels), MammographyParams(size=48)).pixels
    assert np.array_equal(a, preprocess(_image(pixels), MammographyParams(size=48)).pixels)

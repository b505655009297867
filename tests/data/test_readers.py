"""Readers: every format decodes to float (H, W) in [0, 1]; every bad file says which file and why."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from breastfusion.data.preprocess import MammographyParams, preprocess
from breastfusion.data.readers import read_image

from .conftest import assert_named_read_error, breast_phantom, make_dicom

RAMP = (np.arange(40 * 30).reshape(40, 30) % 256).astype(np.uint8)


def read_grayscale(path) -> np.ndarray:
    """``read_image``'s pixels (0..1) back on the 8-bit scale, to compare with the image that was saved."""
    return np.rint(read_image(path).pixels * 255).astype(np.uint8)


@pytest.mark.parametrize("name, save", [
    ("a.png", lambda p: Image.fromarray(RAMP).save(p)),
    ("a.pgm", lambda p: Image.fromarray(RAMP).save(p)),
    ("a.tif", lambda p: Image.fromarray(RAMP).save(p)),
    ("a.npy", lambda p: np.save(p, RAMP)),
    ("a.npz", lambda p: np.savez(p, image=RAMP, other=RAMP)),
    ("wrong_extension.jpg", lambda p: Image.fromarray(RAMP).save(p, format="PNG")),
])
def test_lossless_8_bit_formats_round_trip(tmp_path, name, save):
    path = tmp_path / name
    save(path)
    image = read_image(path)
    assert image.pixels.dtype == np.float32 and image.bits == 8
    assert np.array_equal(read_grayscale(path), RAMP)


def test_jpeg_and_16_bit_png(tmp_path):
    Image.fromarray(RAMP).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_grayscale(tmp_path / "a.jpg").astype(int) - RAMP).mean() < 3
    deep = (RAMP.astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.bits == 16 and np.allclose(image.pixels, deep / 65535, atol=1e-6)


def test_rgba_with_colour_overlay_is_flagged(tmp_path):
    rgba = np.stack([RAMP, RAMP, RAMP, np.full_like(RAMP, 255)], -1)
    rgba[5:10, 5:10, :3] = (255, 0, 0)  # a red mark
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    assert image.pixels.shape == RAMP.shape
    assert image.colour is not None and image.colour.sum() == 25


def test_a_faint_tint_is_not_an_overlay_and_survives_preprocessing(tmp_path):
    """BrEaST-Lesions exports are tinted (R != G on nearly every pixel, |R-G|+|G-B| < 32): before the
    fix every pixel was flagged chromatic and replaced by a 15 x 15 opening, erasing the scan."""
    from breastfusion.data.preprocess import params_for, preprocess

    rng = np.random.default_rng(0)
    grey = rng.integers(20, 200, size=(64, 64)).astype(np.int16)
    tinted = np.stack([grey + 12, grey + 4, grey, np.full_like(grey, 255)], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(tinted, "RGBA").save(tmp_path / "tint.png")
    image = read_image(tmp_path / "tint.png")
    assert image.colour is None
    prepared = preprocess(image, params_for("ultrasound", size=64, crop=False, normalise="none"))
    assert prepared.overlay_pixels == 0
    expected = np.asarray(Image.open(tmp_path / "tint.png").convert("L"), dtype=float)
    assert np.abs(prepared.pixels.astype(float) - expected).mean() < 2  # texture kept, not median-filtered
    # A colour mask that covers most of a scan is a tint, not marks: preprocess ignores it as overlay.
    image.colour = np.ones((64, 64), bool)
    assert preprocess(image, params_for("ultrasound", size=64, crop=False, normalise="none")).overlay_pixels == 0


def test_dicom_12_bit_scaled_by_stored_range_and_identifying_tags_not_kept(tmp_path):
    pixels = np.linspace(0, 4095, 64 * 32).reshape(64, 32).astype(np.uint16)
    image = read_image(make_dicom(tmp_path / "a.dcm", pixels, bits=12, ImageLaterality="R", ViewPosition="CC"))
    assert image.bits == 12 and image.laterality == "R" and image.view == "CC"
    assert image.pixels.min() == 0 and image.pixels.max() == pytest.approx(1.0)
    assert "SECRET-ID-123" not in repr(image)


def test_dicom_window_is_applied(tmp_path):
    pixels = np.linspace(0, 4095, 64 * 32).reshape(64, 32).astype(np.uint16)
    image = read_image(make_dicom(tmp_path / "w.dcm", pixels, WindowCenter=2048, WindowWidth=1024))
    assert image.info["windowed"]
    inside = (pixels > 1600) & (pixels < 2500)
    assert (image.pixels[pixels < 1500] == 0).all() and (image.pixels[pixels > 2600] == 1).all()
    assert 0 < image.pixels[inside].min() < image.pixels[inside].max() < 1
    assert not read_image(tmp_path / "w.dcm", window=False).info["windowed"]


def test_monochrome1_is_inverted(tmp_path):
    pixels = np.linspace(0, 4095, 64 * 32).reshape(64, 32).astype(np.uint16)
    m1 = read_image(make_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")).pixels
    m2 = read_image(make_dicom(tmp_path / "m2.dcm", pixels)).pixels
    assert np.allclose(m1, 1 - m2)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"], ids=["RLE", "JPEG2000"])
def test_compressed_dicom_decodes_losslessly(tmp_path, syntax):
    pixels = breast_phantom(bits=12)
    image = read_image(make_dicom(tmp_path / "c.dcm", pixels, syntax=syntax))
    assert np.allclose(image.pixels, pixels / 4095, atol=1e-6)


def test_real_rle_mammograms_load_windowed_and_flip_to_one_side(mammogram_cases):
    for path in mammogram_cases:
        image = read_image(path)
        assert image.info["transfer_syntax"] == "RLE Lossless" and image.bits == 16
        assert image.laterality in ("L", "R")
        assert 0 <= image.pixels.min() and image.pixels.max() <= 1
        out = preprocess(image, MammographyParams(size=128))
        assert out.flipped == (image.laterality == "R") and out.laterality_from == "dicom"
        pixels = out.pixels.astype(float)
        assert out.pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() >= 240  # normalised to the full range
        assert pixels[:, :64].sum() > 4 * pixels[:, 64:].sum()  # the breast lies against the left edge


def _truncated_png(path):
    Image.fromarray(RAMP).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name, make, pattern", [
    ("bad.png", lambda p: None, r"file not found"),
    ("bad.png", lambda p: p.write_bytes(b""), r"empty file"),
    ("bad.png", _truncated_png, r"truncated or corrupt"),
    ("bad.png", lambda p: p.write_bytes(b"not an image at all" * 10), r"not a recognised image format"),
    ("bad.dcm", lambda p: make_dicom(p, RAMP, pixel_data=False), r"DICOM without pixel data"),
    ("bad.npz", lambda p: np.savez(p, a=RAMP, b=RAMP), r"NPZ holds arrays \['a', 'b'\]; expected exactly one"),
    ("bad.npy", lambda p: np.save(p, np.full((4, 4), np.nan)), r"NaN/inf"),
    ("bad.npy", lambda p: np.save(p, np.zeros((2, 3, 4))), r"expected a 2-D greyscale image"),
], ids=["missing", "empty", "truncated-png", "garbage", "dicom-no-pixels", "npz-two-arrays", "nan", "3d"])
def test_bad_files_name_the_file_and_the_reason(tmp_path, name, make, pattern):
    path = tmp_path / name
    make(path)
    assert_named_read_error(path, pattern)

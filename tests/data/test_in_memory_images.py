"""In-memory images (uploads, notebook arrays) decode exactly as the same image read from a file."""

import numpy as np
import pytest
from PIL import Image

from breastfusion.data.readers import ImageReadError, image_from_array, read_image, read_image_bytes


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(24, 31), (24, 31, 3)])
def test_png_file_bytes_and_array_decode_identically(tmp_path, shape):
    array = _pixels(0, shape)
    path = tmp_path / "frame.png"
    Image.fromarray(array).save(path)
    from_file = read_image(path)
    np.testing.assert_array_equal(read_image_bytes(path.read_bytes(), name="frame.png").pixels, from_file.pixels)
    np.testing.assert_array_equal(image_from_array(np.asarray(Image.open(path))).pixels, from_file.pixels)


def test_float_array_follows_the_npy_rules(tmp_path):
    array = np.random.default_rng(1).normal(size=(9, 7))
    np.save(tmp_path / "a.npy", array)
    np.testing.assert_array_equal(image_from_array(array).pixels, read_image(tmp_path / "a.npy").pixels)


@pytest.mark.parametrize("call, match", [
    (lambda: read_image_bytes(b"", name="up.png"), r"^up\.png: empty file"),
    (lambda: read_image_bytes(b"not an image at all", name="up.png"), r"^up\.png: not a recognised image"),
    (lambda: image_from_array(np.zeros((2, 3, 5)), name="arr"), r"^arr: array of shape"),
    (lambda: image_from_array(np.array([["a"]]), name="arr"), r"^arr: array dtype"),
    (lambda: image_from_array(np.array([[np.nan, 1.0], [0.0, 1.0]]), name="arr"), r"^arr: array holds 1 NaN"),
])
def test_bad_in_memory_images_name_the_source(call, match):
    with pytest.raises(ImageReadError, match=match):
        call()

"""Decode image files and bring them to a fixed square size, once per run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from breastfusion.data.readers import ImageReadError, read_image

__all__ = ["ImageReadError", "read_grayscale", "to_square", "load_images"]


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read any supported image (DICOM, PNG, JPEG, PGM, TIFF, NPY/NPZ) as 8-bit greyscale.

    DICOMs are windowed and MONOCHROME1 is inverted (see :mod:`breastfusion.data.readers`);
    deeper images are scaled from their stored range to 0..255.

    Returns:
        uint8 (H, W).

    Raises:
        ImageReadError: missing, truncated, not an image, or no pixel data.
    """
    return np.rint(read_image(Path(path)).pixels * 255).astype(np.uint8)


def to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Pad (centred, black) to a square, keeping the aspect ratio, then resize to (size, size)."""
    h, w = image.shape
    side = max(h, w)
    canvas = np.zeros((side, side), dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = image
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0))


def load_images(paths: Sequence[str], size: int, *, on_image: Callable[[], None] | None = None) -> np.ndarray:
    """Decode and resize every path; every failure is collected and reported together.

    Returns:
        uint8 array (len(paths), size, size).

    Raises:
        ImageReadError: listing every unreadable file.
    """
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    failures = []
    for i, path in enumerate(paths):
        try:
            out[i] = to_square(read_grayscale(path), size)
        except ImageReadError as exc:
            failures.append(str(exc))
        if on_image is not None:
            on_image()
    if failures:
        listed = "\n  - ".join(failures[:20])
        raise ImageReadError(f"{len(failures)} of {len(paths)} image(s) could not be read:\n  - {listed}")
    return out

"""Decode image files and bring them to a fixed square size, once per run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "read_grayscale", "to_square", "load_images"]


class ImageReadError(OSError):
    """An image file could not be decoded; the message names the file and why."""


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read a PNG / JPEG / PGM / TIFF file as 8-bit greyscale (H, W) uint8.

    Raises:
        ImageReadError: missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("L"))
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: cannot decode image ({exc})") from exc


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

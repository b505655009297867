"""Decode a DICOM file to one greyscale float image in [0, 1] (the DICOM half of :mod:`breastfusion.data.readers`).

The rules, in order:

* **Pixel data**: a file without it (a structured report, a DICOMDIR, a presentation state) is
  refused. Compressed transfer syntaxes decode through the pylibjpeg plugins (RLE, JPEG, JPEG-LS,
  JPEG 2000); a missing decoder is refused, naming the syntax.
* **Size**: ``Rows x Columns`` over :data:`~breastfusion.data.readers.MAX_IMAGE_PIXELS` is refused
  before anything is decoded.
* **Multi-frame**: frame ``frame`` (the first, 0, by default) is decoded and nothing else; an index
  past ``NumberOfFrames`` is refused. ``info["frames"]`` records how many the file has, so a
  caller can tell that a cine loop or a tomosynthesis stack was reduced to one frame.
* **Colour**: ``RGB`` and ``YBR_*`` (pydicom converts YBR to RGB while decoding) and ``PALETTE COLOR``
  (expanded through its lookup table with pydicom's ``apply_color_lut``) become luminance
  (ITU-R 601); ``colour`` marks the chromatic pixels (Doppler, annotations). Any other photometric
  interpretation is refused.
* **Intensity**: the modality LUT (rescale) is applied, then the VOI LUT or window where the file
  has one. Without a window, values are shown on their stored range (``BitsStored``, through the
  rescale) unless they fill less than a quarter of it (a 32-bit dose grid, 12-bit data in a 16-bit
  range, a signed image near zero): then on their 0.5-99.5 percentiles
  (:func:`~breastfusion.data.readers.display_range`). A window that turns a non-constant image
  into a constant one (a CT brain window on bone) is ignored the same way, with a log message;
  ``info["range"]`` says which range was used (``window``, ``stored``, ``percentile``).
* ``MONOCHROME1`` is inverted so that high always means bright.

Only non-identifying metadata leaves this module: patient tags are never copied.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from breastfusion.data.readers import (ImageData, ImageReadError, check_size, colour_to_grey, display_range,
                                       quality_problems, scale)

__all__ = ["read_dicom"]

log = logging.getLogger(__name__)

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_dicom(path: Path, *, window: bool = True, frame: int = 0) -> ImageData:
    """Decode one frame of a DICOM file (see the module docstring for the rules).

    Raises:
        ImageReadError: not DICOM, no pixel data, no decoder, too large, a frame out of range,
            an unsupported photometric interpretation, or non-finite pixel values.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many kinds on foreign or damaged files
        raise ImageReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageReadError(f"{path}: DICOM without pixel data (no tag (7FE0,0010)); it may be a structured "
                             "report, DICOMDIR or presentation state, not an image")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", str(syntax))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in (*_MONOCHROME, *_RGB_LIKE, "PALETTE COLOR"):
        raise ImageReadError(f"{path}: photometric interpretation {photometric!r} is not supported; expected "
                             f"one of {[*_MONOCHROME, 'PALETTE COLOR', *_RGB_LIKE]}")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(f"{path}: DICOM without a usable Rows / Columns / NumberOfFrames ({exc})") from exc
    check_size(path, rows, columns)
    if not 0 <= frame < frames:
        raise ImageReadError(f"{path}: frame {frame} requested, the file has {frames} frame(s) (0..{frames - 1})")
    raw = _decode(path, ds, syntax_name, frame if frames > 1 else None)

    info = {"photometric": photometric, "transfer_syntax": syntax_name, "windowed": False, "frames": frames}
    colour = None
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        grey, colour = colour_to_grey(apply_color_lut(raw, ds))
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        pixels, bits, info["range"] = scale(grey, 0, 2.0 ** lut_bits - 1), lut_bits, "palette"
    elif photometric in _RGB_LIKE:
        if raw.ndim != 3 or raw.shape[-1] != 3:
            raise ImageReadError(f"{path}: {photometric} DICOM decoded to shape {raw.shape}; expected (H, W, 3)")
        grey, colour = colour_to_grey(raw)
        bits = int(ds.get("BitsStored", 8))
        low, high, info["range"] = display_range(grey, 0.0, 2.0 ** bits - 1)
        pixels = scale(grey, low, high)
    else:
        pixels, bits = _monochrome(path, ds, raw, window=window, info=info)
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper() or None
    if laterality not in ("L", "R"):
        laterality = None
    view = str(ds.get("ViewPosition", "") or "").upper() or None
    return ImageData(pixels, bits, "dicom", laterality=laterality, view=view, colour=colour, info=info)


def _decode(path: Path, ds, syntax_name: str, index: int | None) -> np.ndarray:
    """The stored pixel values of one frame (``index``; ``None`` for a single-frame file)."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about fixable header oddities it corrects
            raw = pixel_array(ds, index=index)
    except NotImplementedError as exc:
        raise ImageReadError(f"{path}: no decoder for transfer syntax {syntax_name!r} ({exc}); install the "
                             "pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)") from exc
    except Exception as exc:  # decoders raise RuntimeError, ValueError, PIL errors, ...
        hint = ("; install the pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
                if "missing dependencies" in str(exc) else "")
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({syntax_name}): "
                             f"{type(exc).__name__}: {exc}{hint}") from exc
    return np.asarray(raw)


def _monochrome(path: Path, ds, raw: np.ndarray, *, window: bool, info: dict) -> tuple[np.ndarray, int]:
    """MONOCHROME1/2 stored values → float [0, 1], bright high (see the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if raw.ndim != 2:
        raise ImageReadError(f"{path}: greyscale DICOM decoded to shape {raw.shape}; expected (H, W)")
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all():
            raise ImageReadError(f"{path}: float pixel data holds NaN/inf values; expected finite values")
        values = raw.astype(np.float64)
        bits = 8 * raw.dtype.itemsize
        low, high, info["range"] = float(values.min()), float(values.max()), "minmax"
    else:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        low, high, info["range"] = display_range(values, *_modality_range(ds, bits))
    pixels = scale(values, low, high)
    if window and raw.dtype.kind != "f" and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        windowed = scale(np.asarray(apply_voi_lut(values, ds), dtype=np.float64), *_voi_range(ds, bits))
        if quality_problems(windowed) and not quality_problems(pixels):
            log.warning("%s: the file's window %s makes the image nearly constant; showing it on its %s range",
                        path, _window_text(ds), info["range"])
            info["window_ignored"] = f"window {_window_text(ds)} gives a nearly constant image"
        else:
            pixels, info["windowed"], info["range"] = windowed, True, "window"
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return pixels, bits


def _window_text(ds) -> str:
    if "VOILUTSequence" in ds:
        return "(VOI LUT)"
    return f"(centre {ds.get('WindowCenter')}, width {ds.get('WindowWidth')})"


def _modality_range(ds, bits: int) -> tuple[float, float]:
    """Output range of the modality LUT over the stored range (PS3.3 C.11.1): the LUT's depth, else the rescale."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    if int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, 2.0 ** bits - 1
    else:
        y_min, y_max = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)


def _voi_range(ds, bits: int) -> tuple[float, float]:
    """Output range of pydicom's VOI transform: the LUT's bit depth, else the window's y range (PS3.3 C.11.2)."""
    if "VOILUTSequence" in ds:  # apply_voi_lut prefers the LUT over a window
        return 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    return _modality_range(ds, bits)

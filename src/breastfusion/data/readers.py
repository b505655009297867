"""Decode one image file of any supported format into a greyscale float array.

Formats (chosen by the file's first bytes, so a wrong extension does not matter):

* DICOM (``DICM`` at byte 128, or a ``.dcm`` name): pydicom, with the
  pylibjpeg plugins for RLE, JPEG, JPEG-LS and JPEG 2000 transfer syntaxes;
  the modality LUT (rescale) then the VOI LUT or window is applied, and
  ``MONOCHROME1`` is inverted so that high always means bright.
* NPZ / NPY: one 2-D array (an ``.npz`` must hold exactly one array, or an
  array named ``image``).
* Everything Pillow opens: PNG (8/16 bit, grey, RGB, RGBA), JPEG, PGM, TIFF.

Every failure raises :class:`ImageReadError` whose message starts with the
file's path and says what was wrong. Only non-identifying metadata (bit depth,
laterality, view, photometric interpretation, transfer syntax) leaves this
module: patient tags are never copied.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "ImageData", "read_image", "sniff_format"]


class ImageReadError(OSError):
    """An image file could not be decoded; the message names the file and why."""


@dataclass
class ImageData:
    """A decoded image.

    Attributes:
        pixels: float32 (H, W) in [0, 1]; 0 is black, 1 white (after windowing and
            MONOCHROME1 inversion).
        bits: bit depth of the stored samples (8, 12, 16, ...; 32 for float arrays).
        format: ``dicom``, ``npz``, ``npy`` or the Pillow format name (``PNG``, ...).
        laterality: ``L``/``R`` from the DICOM tags, else ``None``.
        view: DICOM ``ViewPosition`` (``CC``, ``MLO``, ...) where present, else ``None``.
        colour: bool (H, W) where the source had chromatic pixels (R, G, B not all
            equal: colour overlays, Doppler), else ``None`` for grey sources.
        info: other non-identifying facts (photometric interpretation, transfer syntax, windowed).
    """

    pixels: np.ndarray
    bits: int
    format: str
    laterality: str | None = None
    view: str | None = None
    colour: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def sniff_format(path: Path) -> str:
    """Return ``dicom``, ``npz``, ``npy`` or ``pillow`` from the file's first bytes.

    Raises:
        ImageReadError: the file is missing, empty or unreadable.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    if not head:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or path.suffix.lower() == ".npz":
        return "npz"
    return "pillow"


def read_image(path: str | Path, *, window: bool = True) -> ImageData:
    """Decode ``path`` to a greyscale float image in [0, 1].

    Args:
        path: the image file.
        window: apply a DICOM's VOI LUT / window (when it has one); without it
            (or without a window in the file) the stored range is used.

    Returns:
        The decoded :class:`ImageData`, ``pixels`` float32 (H, W).

    Raises:
        ImageReadError: missing, truncated, not an image, no pixel data, a
            compressed DICOM without a decoder, or not 2-D.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "dicom":
        return _read_dicom(path, window=window)
    if kind in ("npy", "npz"):
        return _read_array(path, kind)
    return _read_pillow(path)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values.astype(np.float32) - low) / span, 0.0, 1.0)


#: Least |R - G| + |G - B| (of 255) that makes a pixel chromatic: colour overlays and Doppler are far above
#: it, while the faint tint of some exports is below it (BrEaST-Lesions: 118 of 252 images have R != G on
#: nearly every pixel, and none reaches 32), and a tint must not be erased as an overlay.
CHROMA_MIN = 32


def _read_pillow(path: Path) -> ImageData:
    try:
        with Image.open(path) as image:
            image.load()
            fmt = image.format or "image"
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                raw = np.asarray(image).astype(np.float64)
                bits = 16 if mode.startswith("I;16") or raw.max(initial=0) > 255 else 8
                return ImageData(_scale(raw, 0, 2 ** bits - 1), bits, fmt, info={"mode": mode})
            if mode == "F":
                raw = np.asarray(image, dtype=np.float64)
                return ImageData(_scale(raw, np.nanmin(raw), np.nanmax(raw)), 32, fmt, info={"mode": mode})
            colour = None
            if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                rgb = np.asarray(image.convert("RGB")).astype(np.int16)
                chroma = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) >= CHROMA_MIN
                colour = chroma if chroma.any() else None
            grey = np.asarray(image.convert("L"))
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a recognised image format (expected DICOM, PNG, JPEG, PGM, TIFF, "
                             "NPY or NPZ)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot decode image, the file may be truncated or corrupt ({exc})") from exc
    return ImageData(_scale(grey, 0, 255), 8, fmt, colour=colour, info={"mode": mode})


def _read_array(path: Path, kind: str) -> ImageData:
    try:
        if kind == "npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = "image" if "image" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ImageReadError(f"{path}: NPZ holds arrays {keys}; expected exactly one array or one "
                                         "named 'image'")
                array = archive[key]
    except ImageReadError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ImageReadError(f"{path}: cannot read {kind.upper()} array ({exc})") from exc
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ImageReadError(f"{path}: array of shape {array.shape}; expected a 2-D greyscale image (H, W)")
    if array.dtype == np.uint8:
        return ImageData(_scale(array, 0, 255), 8, kind)
    if array.dtype == np.uint16:
        return ImageData(_scale(array, 0, 65535), 16, kind)
    if not np.issubdtype(array.dtype, np.number):
        raise ImageReadError(f"{path}: array dtype {array.dtype}; expected a numeric array")
    finite = np.isfinite(array)
    if not finite.all():
        raise ImageReadError(f"{path}: array holds {int((~finite).sum())} NaN/inf value(s); expected finite values")
    return ImageData(_scale(array, float(array.min()), float(array.max())), 8 * array.dtype.itemsize, kind)


def _read_dicom(path: Path, *, window: bool) -> ImageData:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(f"{path}: DICOM without pixel data (no tag (7FE0,0010)); it may be a structured "
                             "report or presentation state, not an image")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    syntax_name = getattr(syntax, "name", str(syntax))
    try:
        raw = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        raise ImageReadError(f"{path}: no decoder for transfer syntax {syntax_name!r} ({exc}); install the "
                             "pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)") from exc
    except (ValueError, AttributeError, EOFError, OSError) as exc:
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({syntax_name}): {exc}") from exc
    if raw.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        raw = raw[0]  # multi-frame: the first frame
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if raw.ndim == 3:
        raise ImageReadError(f"{path}: {photometric} colour DICOM of shape {raw.shape}; expected greyscale "
                             "(MONOCHROME1/2)")
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    values = apply_modality_lut(raw, ds).astype(np.float64)
    windowed = False
    if window and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        values = apply_voi_lut(values, ds).astype(np.float64)
        windowed = True
    if windowed:
        low, high = _voi_range(ds)
    else:
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        low = -(2.0 ** (bits - 1)) if signed else 0.0
        high = (2.0 ** (bits - 1) - 1) if signed else 2.0 ** bits - 1
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            low, high = float(values.min()), float(values.max())
    pixels = _scale(values, low, high)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    laterality = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").upper() or None
    if laterality not in ("L", "R"):
        laterality = None
    view = str(ds.get("ViewPosition", "") or "").upper() or None
    return ImageData(pixels, bits, "dicom", laterality=laterality, view=view,
                     info={"photometric": photometric, "transfer_syntax": syntax_name, "windowed": windowed})


def _voi_range(ds) -> tuple[float, float]:
    """Output range of pydicom's VOI transform: the LUT's bit depth, else the window's y range (PS3.3 C.11.2)."""
    if "VOILUTSequence" in ds:  # apply_voi_lut prefers the LUT over a window
        return 0.0, 2.0 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, 2.0 ** bits - 1
    else:
        y_min, y_max = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return y_min, y_max

"""Decode one image file of any supported format into a greyscale float array.

The contract: :func:`read_image` returns a 2-D greyscale float image in [0, 1], or raises
:class:`ImageReadError` whose message starts with the file's path and says why. Nothing else
escapes it (a decoder's own exception, Pillow's ``DecompressionBombError``, ...): an unexpected
decoder error is wrapped, naming the file and the decoder's message.

Formats (chosen by the file's first bytes, so a wrong extension does not matter):

* DICOM (``DICM`` at byte 128, or a ``.dcm`` name): see :mod:`breastfusion.data.dicom` for the
  rules (first frame of a multi-frame file, colour to luminance, windowing and its fallbacks).
* NPZ / NPY: one 2-D array (an ``.npz`` must hold exactly one array, or an array named ``image``).
* Everything Pillow opens: PNG (8/16 bit, grey, RGB, RGBA, palette), JPEG, PGM, TIFF; colour is
  converted to luminance (ITU-R 601, as Pillow's ``convert("L")``) and flagged in ``colour``.

Images larger than :data:`MAX_IMAGE_PIXELS` are refused before they are decoded (a 400 KB PNG can
claim 20000 x 20000 pixels: a decompression bomb). :func:`quality_problems` says when a decoded
image is nearly constant or nearly black, which ``data check`` reports as suspicious.

Only non-identifying metadata (bit depth, laterality, view, photometric interpretation, transfer
syntax) leaves this module: patient tags are never copied.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_IMAGE_PIXELS", "ImageReadError", "ImageData", "check_size", "colour_to_grey", "display_range",
           "image_from_array", "quality_problems", "read_image", "read_image_bytes", "scale", "sniff_format"]

#: Largest image (rows x columns x frames read) decoded; bigger files are refused as possible decompression
#: bombs. 2**27 (134 M pixels) is 6x a full-field digital mammogram (about 4000 x 5600).
MAX_IMAGE_PIXELS = 2**27
#: ``quality_problems`` calls an image nearly constant when its 0.5-99.5 percentile spread is under this.
NEAR_CONSTANT_SPREAD = 4 / 255


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
    return _kind(head, path)


def _kind(head: bytes, path: Path) -> str:
    """The decoder for a file whose first 132 bytes are ``head`` (``path`` names it and gives its suffix)."""
    if not head:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04") or path.suffix.lower() == ".npz":
        return "npz"
    return "pillow"


def read_image(path: str | Path, *, window: bool = True, frame: int = 0) -> ImageData:
    """Decode ``path`` to a greyscale float image in [0, 1].

    Args:
        path: the image file.
        window: apply a DICOM's VOI LUT / window (when it has one); without it
            (or without a window in the file) the stored range is used.
        frame: which frame of a multi-frame DICOM to read (0, the first, by default; a
            multi-frame file's other frames are never mixed in). Ignored for other formats.

    Returns:
        The decoded :class:`ImageData`, ``pixels`` float32 (H, W), finite, in [0, 1].

    Raises:
        ImageReadError: missing, truncated, not an image, no pixel data, a compressed DICOM
            without a decoder, too large (:data:`MAX_IMAGE_PIXELS`), not 2-D, a frame out of
            range, or any other decoder failure; the message starts with the path.
    """
    path = Path(path)
    return _decode(path, sniff_format(path), window=window, frame=frame)


class _NamedBytes(io.BytesIO):
    """In-memory file whose ``str`` is a caller-given name, so every decoder's messages name the upload."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = name
        self.suffix = Path(name).suffix

    def __str__(self) -> str:
        return self.label


def read_image_bytes(data: bytes, *, name: str = "<bytes>", window: bool = True, frame: int = 0) -> ImageData:
    """Decode an image held in memory (an upload, a blob), by the same decoders and rules as :func:`read_image`.

    Why: a web page or notebook has the file's bytes, not a path; writing them to a temporary file
    only to read them back is slow and leaves patient images on disk.

    Args:
        data: the encoded file (DICOM, PNG, JPEG, PGM, TIFF, NPY or NPZ).
        name: what error messages call it (an upload's file name; its suffix also hints the format
            as a file's would).
        window, frame: as for :func:`read_image`.

    Returns:
        The decoded :class:`ImageData`, the same as :func:`read_image` gives for a file of these bytes.

    Raises:
        ImageReadError: as :func:`read_image`; the message starts with ``name``.
    """
    source = _NamedBytes(bytes(data), name)
    return _decode(source, _kind(source.getvalue()[:132], Path(name)), window=window, frame=frame)


def image_from_array(array: np.ndarray, *, name: str = "<array>") -> ImageData:
    """An in-memory pixel array as :class:`ImageData`, scaled by the rules a file of that array gets.

    A 2-D array follows the NPY rules (uint8 over 0..255, uint16 over 0..65535, other numbers over their
    min..max); an (H, W, 3|4) uint8 array (what Pillow, OpenCV-after-BGR2RGB or imageio decode a colour
    PNG or JPEG to) is converted to grey by Pillow as :func:`read_image` converts a colour file, so
    an image file and its decoded array give the same pixels and hence the same prediction.

    Raises:
        ImageReadError: not an array of numbers, not 2-D (or H x W x 3|4 uint8), or NaN/inf values;
            the message starts with ``name``.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")  # lossless: the file path's exact conversion
        return read_image_bytes(buffer.getvalue(), name=name)
    buffer = io.BytesIO()
    if not np.issubdtype(array.dtype, np.number):
        raise ImageReadError(f"{name}: array dtype {array.dtype}; expected a numeric array")
    np.save(buffer, array, allow_pickle=False)
    return read_image_bytes(buffer.getvalue(), name=name)


def _decode(path: Path | _NamedBytes, kind: str, *, window: bool, frame: int) -> ImageData:
    """Run the decoder for ``kind`` on ``path`` (a file or in-memory bytes) and enforce the output contract."""
    try:
        if kind == "dicom":
            from breastfusion.data.dicom import read_dicom

            image = read_dicom(path, window=window, frame=frame)
        elif kind in ("npy", "npz"):
            image = _read_array(path, kind)
        else:
            image = _read_pillow(path)
    except ImageReadError:
        raise
    except Exception as exc:  # the contract: a decoder's own failure still names the file
        raise ImageReadError(f"{path}: cannot decode {kind} image ({type(exc).__name__}: {exc})") from exc
    return _checked(path, image)


def _checked(path: Path, image: ImageData) -> ImageData:
    """Enforce the output contract on a decoded image (a reader bug must not pass silently)."""
    pixels = image.pixels
    if pixels.ndim != 2 or 0 in pixels.shape:
        raise ImageReadError(f"{path}: decoded to shape {pixels.shape}; expected a 2-D greyscale image (H, W)")
    if not np.isfinite(pixels).all():
        raise ImageReadError(f"{path}: decoded image holds NaN/inf values; expected finite values")
    image.pixels = pixels.astype(np.float32, copy=False)
    return image


def quality_problems(pixels: np.ndarray) -> list[str]:
    """Why a decoded image looks wrong: nearly constant, or nearly black; empty when it looks fine.

    A real mammogram or ultrasound frame has structure; a decoded image whose 0.5-99.5 percentile
    spread is under :data:`NEAR_CONSTANT_SPREAD`, or whose 99.5th percentile is under 2 %, was most
    likely decoded with the wrong range (``data check`` lists such files as suspicious).

    Args:
        pixels: float (H, W) in [0, 1].
    """
    low, high = (float(v) for v in np.percentile(pixels, [0.5, 99.5]))
    problems = []
    if high - low < NEAR_CONSTANT_SPREAD:
        problems.append(f"nearly constant (0.5-99.5 percentile spread {high - low:.4f} of the range [0, 1])")
    elif high < 0.02:
        problems.append(f"nearly black (99.5th percentile {high:.4f})")
    return problems


def check_size(path: Path, rows: int, columns: int, frames: int = 1) -> None:
    """Refuse an image whose declared size exceeds :data:`MAX_IMAGE_PIXELS`, before decoding it."""
    pixels = int(rows) * int(columns) * max(int(frames), 1)
    if pixels > MAX_IMAGE_PIXELS:
        raise ImageReadError(f"{path}: declares {rows} x {columns} pixels"
                             f"{f' x {frames} frames' if frames > 1 else ''} ({pixels / 1e6:.0f} M), over the "
                             f"limit of {MAX_IMAGE_PIXELS / 1e6:.0f} M (readers.MAX_IMAGE_PIXELS): refused as a "
                             "possible decompression bomb")


#: Least |R - G| + |G - B| (of 255) that makes a pixel chromatic: colour overlays and Doppler are far above
#: it, while the faint tint of some exports is below it (BrEaST-Lesions: 118 of 252 images have R != G on
#: nearly every pixel, and none reaches 32), and a tint must not be erased as an overlay.
CHROMA_MIN = 32


def colour_to_grey(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) RGB → float64 luminance (ITU-R 601) and the chromatic-pixel mask (``None`` if all grey)."""
    rgb = rgb[..., :3].astype(np.float64)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    chroma = (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])) >= CHROMA_MIN
    return grey, (chroma if chroma.any() else None)


def scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped linearly from [low, high] to float32 [0, 1], clipped (zeros when the range is empty)."""
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values.astype(np.float32) - low) / span, 0.0, 1.0)


def display_range(values: np.ndarray, low: float, high: float) -> tuple[float, float, str]:
    """The range to scale an image without a window by: its stored range, unless the data fill little of it.

    The rule (documented in :mod:`breastfusion.data.dicom`): values are shown on their stored range
    ``[low, high]`` (e.g. 0..4095 for 12 bits) when they span at least a quarter of it; otherwise
    (a 32-bit dose grid, 12-bit data in 16 bits, a signed image near zero) the stored range would
    give a nearly black or grey image, so the 0.5-99.5 percentiles of the values are used instead.

    Returns:
        ``(low, high, source)`` with ``source`` ``"stored"`` or ``"percentile"``.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return low, high, "stored"
    span = float(finite.max() - finite.min())
    if span >= (high - low) / 4:
        return low, high, "stored"
    p_low, p_high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if p_high <= p_low:  # a few outliers on a constant background: their full range
        p_low, p_high = float(finite.min()), float(finite.max())
    return p_low, p_high, "percentile"


def _read_pillow(path: Path) -> ImageData:
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_size enforces our limit
            check_size(path, image.height, image.width)
            image.load()
            fmt = image.format or "image"
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                raw = np.asarray(image).astype(np.float64)
                top = raw.max(initial=0)
                bits = 32 if top > 65535 or raw.min(initial=0) < 0 else (
                    16 if mode.startswith("I;16") or top > 255 else 8)
                low, high, source = display_range(raw, 0.0, 2.0 ** bits - 1)
                return ImageData(scale(raw, low, high), bits, fmt, info={"mode": mode, "range": source})
            if mode == "F":
                raw = np.asarray(image, dtype=np.float64)
                return ImageData(scale(raw, np.nanmin(raw), np.nanmax(raw)), 32, fmt, info={"mode": mode})
            colour = None
            if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                _, colour = colour_to_grey(np.asarray(image.convert("RGB")))
            grey = np.asarray(image.convert("L"))
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{path}: not a recognised image format (expected DICOM, PNG, JPEG, PGM, TIFF, "
                             "NPY or NPZ)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"{path}: cannot decode image, the file may be truncated or corrupt ({exc})") from exc
    return ImageData(scale(grey, 0, 255), 8, fmt, colour=colour, info={"mode": mode})


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
        return ImageData(scale(array, 0, 255), 8, kind)
    if array.dtype == np.uint16:
        return ImageData(scale(array, 0, 65535), 16, kind)
    if not np.issubdtype(array.dtype, np.number):
        raise ImageReadError(f"{path}: array dtype {array.dtype}; expected a numeric array")
    finite = np.isfinite(array)
    if not finite.all():
        raise ImageReadError(f"{path}: array holds {int((~finite).sum())} NaN/inf value(s); expected finite values")
    return ImageData(scale(array, float(array.min()), float(array.max())), 8 * array.dtype.itemsize, kind)



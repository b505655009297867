"""Per-modality preprocessing: decoded image (H, W) float → fixed square uint8 (S, S).

Mammography: breast-region crop (threshold + largest connected component,
which also drops labels and markers), flip so the chest wall is on one side
(DICOM laterality tag, else the side holding more breast), resize keeping the
aspect ratio, pad, normalise intensity.

Ultrasound: crop to the scan area (threshold + largest component after an
opening that detaches text), suppress overlays that are cheap to detect
(chromatic pixels, and small saturated marks far brighter than their
neighbourhood: text, caliper crosses) by a local median, resize and pad,
normalise.

Either modality may first crop to a region of interest from a mask or a box.
Parameters are frozen dataclasses: ``params.to_dict()`` is what a run records
and what keys the cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from breastfusion.data.readers import ImageData

__all__ = [
    "PreprocessError",
    "MammographyParams",
    "UltrasoundParams",
    "Prepared",
    "params_for",
    "preprocess",
    "largest_component_box",
    "roi_box",
    "resize_pad",
    "normalise",
    "align_mask",
]

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive
NORMALISATIONS = ("percentile", "minmax", "none")
#: none: the whole scan; mask / box: the reader's lesion (manifest mask_path / roi_box); predicted: the box a lesion
#: localiser (breastfusion.models.localiser) found, given like a box.
ROI_MODES = ("none", "mask", "box", "predicted")


class PreprocessError(ValueError):
    """Bad preprocessing parameters, or an ROI that does not fit its image."""


def _check_common(params) -> None:
    if not isinstance(params.size, int) or params.size < 8:
        raise PreprocessError(f"size should be an integer >= 8, got {params.size!r}")
    if params.normalise not in NORMALISATIONS:
        raise PreprocessError(f"normalise should be one of {list(NORMALISATIONS)}, got {params.normalise!r}")
    low, high = params.percentiles
    if not 0 <= low < high <= 100:
        raise PreprocessError(f"percentiles should satisfy 0 <= low < high <= 100, got {params.percentiles!r}")
    if not 0 <= params.threshold < 1:
        raise PreprocessError(f"threshold should be in [0, 1), got {params.threshold!r}")
    if params.roi not in ROI_MODES:
        raise PreprocessError(f"roi should be one of {list(ROI_MODES)}, got {params.roi!r}")
    if not 0 <= params.roi_margin <= 2:
        raise PreprocessError(f"roi_margin should be in [0, 2] (a fraction of the ROI size), got {params.roi_margin!r}")


class _ParamsDict:
    """Shared by the parameter classes: a plain, JSON-ready dict (what a run records and the cache keys on)."""

    def to_dict(self) -> dict:
        return {**asdict(self), "percentiles": list(self.percentiles)}


@dataclass(frozen=True)
class MammographyParams(_ParamsDict):
    """Mammography preprocessing.

    Attributes:
        size: output side S in pixels.
        crop: crop to the breast (largest component above ``threshold``).
        threshold: breast/background threshold on the [0, 1] image.
        chest_wall: ``left`` or ``right`` to flip every image that way; ``none`` keeps it.
        normalise: ``percentile`` (breast pixels' ``percentiles`` → 0..255), ``minmax`` or ``none``.
        percentiles: (low, high) for ``percentile``.
        roi: ``none``, ``mask`` or ``box`` (crop to a lesion ROI given with the image), or ``predicted`` (crop to
            the box of an in-fold lesion localiser: :mod:`breastfusion.experiment.localisation`).
        roi_margin: context kept around the ROI, as a fraction of its size.
    """

    modality: Literal["mammography"] = field(default="mammography", init=False)
    size: int = 256
    crop: bool = True
    threshold: float = 0.04
    chest_wall: Literal["left", "right", "none"] = "left"
    normalise: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    roi: str = "none"
    roi_margin: float = 0.25

    def __post_init__(self):
        _check_common(self)
        if self.chest_wall not in ("left", "right", "none"):
            raise PreprocessError(f"chest_wall should be one of ['left', 'right', 'none'], got {self.chest_wall!r}")



@dataclass(frozen=True)
class UltrasoundParams(_ParamsDict):
    """Ultrasound preprocessing.

    Attributes:
        size: output side S in pixels.
        crop: crop to the scan area (largest component above ``threshold``).
        threshold: scan-area threshold on the [0, 1] image.
        suppress_overlays: replace chromatic pixels and small saturated marks by a local median.
        normalise, percentiles, roi, roi_margin: as for :class:`MammographyParams`.
    """

    modality: Literal["ultrasound"] = field(default="ultrasound", init=False)
    size: int = 256
    crop: bool = True
    threshold: float = 0.02
    suppress_overlays: bool = True
    normalise: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    roi: str = "none"
    roi_margin: float = 0.25

    def __post_init__(self):
        _check_common(self)



Params = MammographyParams | UltrasoundParams


def params_for(modality: str, **overrides) -> Params:
    """The default parameters of ``modality`` with ``overrides`` applied.

    Raises:
        PreprocessError: unknown modality or bad parameter value.
    """
    kinds = {"mammography": MammographyParams, "ultrasound": UltrasoundParams}
    if modality not in kinds:
        raise PreprocessError(f"modality should be one of {list(kinds)}, got {modality!r}")
    try:
        return kinds[modality](**overrides)
    except TypeError as exc:
        raise PreprocessError(f"{modality} preprocessing: {exc}") from exc


@dataclass
class Prepared:
    """The result of :func:`preprocess`.

    Attributes:
        pixels: uint8 (S, S).
        crop: (top, left, bottom, right) of the crop in the source image.
        flipped: whether the image was mirrored left-right.
        laterality_from: ``dicom``, ``image`` or ``None`` (no flip asked).
        overlay_pixels: how many pixels overlay suppression replaced.
    """

    pixels: np.ndarray
    crop: Box
    flipped: bool = False
    laterality_from: str | None = None
    overlay_pixels: int = 0


def largest_component_box(mask: np.ndarray, *, opening: int = 0) -> Box | None:
    """Bounding box of the largest 8-connected component of a boolean (H, W) mask.

    Works on a copy at most ~512 px a side for speed; the box is mapped back.

    Args:
        mask: bool (H, W).
        opening: radius (in the reduced image) of a binary opening applied first.

    Returns:
        (top, left, bottom, right), or ``None`` for an empty mask.
    """
    step = max(1, int(np.ceil(max(mask.shape) / 512)))
    small = mask[::step, ::step]
    if opening:
        small = ndimage.binary_opening(small, structure=np.ones((2 * opening + 1,) * 2, bool))
    labels, n = ndimage.label(small, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    h, w = mask.shape
    return (rows.min() * step, cols.min() * step, min(h, (rows.max() + 1) * step), min(w, (cols.max() + 1) * step))


def roi_box(shape: tuple[int, int], *, mask: np.ndarray | None = None, box: Box | None = None,
            margin: float = 0.25) -> Box:
    """ROI crop box from a lesion mask or a (top, left, bottom, right) box, with context ``margin``.

    Raises:
        PreprocessError: the mask's shape differs from the image's, the mask is empty, or the box is outside.
    """
    h, w = shape
    if mask is not None:
        if mask.shape != shape:
            raise PreprocessError(f"ROI mask of shape {mask.shape} does not match its image {shape}")
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            raise PreprocessError("ROI mask is empty; expected at least one lesion pixel")
        top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    elif box is not None:
        top, left, bottom, right = (int(v) for v in box)
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise PreprocessError(f"ROI box {box} is not inside the image of shape {shape} "
                                  "(expected 0 <= top < bottom <= H, 0 <= left < right <= W)")
    else:
        raise PreprocessError("an ROI crop needs a mask or a box")
    dy, dx = int((bottom - top) * margin), int((right - left) * margin)
    return max(0, top - dy), max(0, left - dx), min(h, bottom + dy), min(w, right + dx)


def resize_pad(image: np.ndarray, size: int, *, anchor: Literal["center", "left", "right"] = "center") -> np.ndarray:
    """Resize float (H, W) so its longer side is ``size`` (aspect kept) and zero-pad to (size, size).

    Args:
        anchor: ``left`` / ``right`` keeps the image against that edge (a mammogram's chest wall).
    """
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(
        (nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0 if scale < 0.5 else None))
    out = np.zeros((size, size), np.float32)
    top = (size - nh) // 2
    left = {"left": 0, "right": size - nw}.get(anchor, (size - nw) // 2)
    out[top:top + nh, left:left + nw] = resized
    return out


def normalise(image: np.ndarray, how: str, percentiles: tuple[float, float] = (0.5, 99.5),
              *, foreground: np.ndarray | None = None) -> np.ndarray:
    """Map float (H, W) to [0, 1]: ``percentile`` / ``minmax`` over ``foreground`` pixels, or ``none``."""
    if how == "none":
        return np.clip(image, 0.0, 1.0)
    values = image[foreground] if foreground is not None and foreground.any() else image.ravel()
    low, high = (np.percentile(values, percentiles) if how == "percentile"
                 else (values.min(), values.max()))
    if high <= low:
        return np.clip(image, 0.0, 1.0)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


#: A colour mask covering more of the scan than this is a tinted image, not an overlay (overlays are marks).
MAX_OVERLAY_COLOUR_FRACTION = 0.2


def _overlay_mask(image: np.ndarray, colour: np.ndarray | None, background: np.ndarray) -> np.ndarray:
    """Pixels of burned-in marks: chromatic ones, and saturated ones far above the grey opening (thin bright marks).

    ``colour`` is ``None`` for a grey source and for a tinted one (see :func:`preprocess`)."""
    marks = np.zeros(image.shape, bool) if colour is None else colour.copy()
    marks |= (image >= 0.9) & (image - background > 0.35)
    return ndimage.binary_dilation(marks, iterations=1) if marks.any() else marks


def _chest_wall_side(image: ImageData, crop: np.ndarray) -> tuple[str, str]:
    """Which side the chest wall is on (``left``/``right``) and where that came from (``dicom``/``image``)."""
    if image.laterality in ("L", "R"):
        # Standard display (and CBIS-DDSM, CMMD): a left breast has its chest wall on the image's left.
        return ("left" if image.laterality == "L" else "right"), "dicom"
    half = crop.shape[1] // 2
    return ("left" if crop[:, :half].sum() >= crop[:, half:].sum() else "right"), "image"


def preprocess(image: ImageData, params: Params, *, roi_mask: np.ndarray | None = None,
               roi: Box | None = None) -> Prepared:
    """Preprocess one decoded image.

    Args:
        image: from :func:`breastfusion.data.readers.read_image`; ``pixels`` float (H, W) in [0, 1].
        params: :class:`MammographyParams` or :class:`UltrasoundParams`.
        roi_mask: bool (H, W) lesion mask, used when ``params.roi == "mask"``.
        roi: (top, left, bottom, right) box, used when ``params.roi`` is ``"box"`` or ``"predicted"``.

    Returns:
        :class:`Prepared` with uint8 (S, S) pixels.

    Raises:
        PreprocessError: an ROI was asked for but not given, or does not fit the image.
    """
    pixels = image.pixels
    h, w = pixels.shape
    box: Box = (0, 0, h, w)
    if params.roi == "mask":
        if roi_mask is None:
            raise PreprocessError("roi='mask' but no mask was given for this image")
        box = roi_box((h, w), mask=roi_mask, margin=params.roi_margin)
    elif params.roi in ("box", "predicted"):
        if roi is None:
            raise PreprocessError(f"roi={params.roi!r} but no box was given for this image"
                                  + (" (the lesion localiser's box)" if params.roi == "predicted" else ""))
        box = roi_box((h, w), box=roi, margin=params.roi_margin)
    elif params.crop:
        opening = 0 if params.modality == "mammography" else 2
        found = largest_component_box(pixels > params.threshold, opening=opening)
        box = found or box
    top, left, bottom, right = box
    crop = pixels[top:bottom, left:right]
    colour = None if image.colour is None else image.colour[top:bottom, left:right]
    if colour is not None and colour.mean() > MAX_OVERLAY_COLOUR_FRACTION:
        # A tinted export is chromatic nearly everywhere: those are not marks, and replacing all of them by a
        # 15 x 15 opening would erase the scan.
        colour = None
    result = Prepared(pixels=np.empty(0, np.uint8), crop=tuple(int(v) for v in box))

    if params.modality == "ultrasound" and params.suppress_overlays:
        # A grey opening (min then max filter, linear time) erases marks thinner than 7 px: text, calipers.
        background = ndimage.grey_opening(crop, size=(7, 7))
        marks = _overlay_mask(crop, colour, background)
        if marks.any():
            crop = crop.copy()
            crop[marks] = ndimage.grey_opening(crop, size=(15, 15))[marks] if colour is not None else background[marks]
            result.overlay_pixels = int(marks.sum())

    anchor = "center"
    if params.modality == "mammography" and params.chest_wall != "none":
        side, result.laterality_from = _chest_wall_side(image, crop)
        if side != params.chest_wall:
            crop = crop[:, ::-1]
            result.flipped = True
        anchor = params.chest_wall
    foreground = crop > params.threshold
    crop = normalise(crop, params.normalise, params.percentiles, foreground=foreground)
    out = resize_pad(np.ascontiguousarray(crop), params.size, anchor=anchor)
    result.pixels = np.rint(out * 255).astype(np.uint8)
    return result


def align_mask(mask: np.ndarray, prepared: Prepared, params: Params) -> np.ndarray:
    """A lesion mask of an image through that image's preprocessing geometry.

    The mask (H, W) of the original image is cropped to the box :func:`preprocess` chose for the image
    (``prepared.crop``), mirrored when the image was, then resized and padded as the image was, so it lies
    over the pixels the network sees (explanations score heatmaps against it; mask supervision trains on it).

    Returns:
        float32 (S, S) in [0, 1]: the share of each output pixel inside the lesion.
    """
    top, left, bottom, right = prepared.crop
    crop = np.asarray(mask, dtype=np.float32)[top:bottom, left:right]
    if prepared.flipped:
        crop = crop[:, ::-1]
    anchor = params.chest_wall if params.modality == "mammography" and params.chest_wall != "none" else "center"
    return np.clip(resize_pad(np.ascontiguousarray(crop), params.size, anchor=anchor), 0.0, 1.0)

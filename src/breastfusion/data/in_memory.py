"""One case held in memory (pixel arrays or encoded bytes, a dict of clinical values) as a cohort.

Why: a web page or a notebook has an upload's bytes or an array, not a folder; writing them into a temporary
manifest only to read them back is slow and leaves patient images on disk. :func:`case_cohort` builds the
:class:`~breastfusion.data.manifest.Cohort` such a folder would give (one subject, one lesion, no label), with
the decoded images attached (``Cohort.decoded``), so every later step (preprocessing, the fold networks,
explanations) is the one a folder goes through, and nothing is written.

Images are decoded by the file rules (:mod:`breastfusion.data.readers`): arrays with
:func:`~breastfusion.data.readers.image_from_array`, bytes with
:func:`~breastfusion.data.readers.read_image_bytes`, so an array or the bytes of a file give the pixels the
file gives.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from breastfusion.data.manifest import IMAGE_MODALITIES, MANIFEST_COLUMNS, Cohort
from breastfusion.data.readers import ImageData, image_from_array, read_image_bytes

__all__ = ["IN_MEMORY_ROOT", "ImageInput", "InMemoryCaseError", "case_cohort", "decode_image"]

#: What a case held in memory reports as its folder in messages (it has none).
IN_MEMORY_ROOT = Path("<in-memory case>")

#: One image: a pixel array (H, W) or (H, W, 3|4) uint8, an encoded file's bytes, or an already decoded image.
ImageInput = Union[np.ndarray, bytes, bytearray, memoryview, ImageData]


class InMemoryCaseError(ValueError):
    """An in-memory case cannot be built; the message names the key and what was expected."""


def decode_image(value: Any, *, name: str) -> ImageData:
    """One in-memory image as :class:`~breastfusion.data.readers.ImageData`.

    Args:
        value: an array (NPY rules, or colour uint8 converted as a colour file is), encoded bytes (DICOM, PNG,
            JPEG, ...), or an ``ImageData`` (kept as is).
        name: what messages call it (e.g. ``images['ultrasound'][0]``).

    Raises:
        ImageReadError: undecodable bytes, or an array that is not an image (wrong shape, NaN, not numeric).
        InMemoryCaseError: any other type (a path string, say).
    """
    if isinstance(value, ImageData):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return read_image_bytes(bytes(value), name=name)
    if isinstance(value, np.ndarray):
        return image_from_array(value, name=name)
    hint = "; to predict image files, pass a cohort folder or manifest" if isinstance(value, (str, Path)) else ""
    raise InMemoryCaseError(f"{name}: got {type(value).__name__}; expected a numpy array (H, W), an encoded "
                            f"image's bytes or an ImageData{hint}")


def _views(modality: str, value: Any) -> list[tuple[str, Any, str]]:
    """``(view, image, name)`` of one modality's entry: an image, a list of images, or ``{view: image}``."""
    where = f"images[{modality!r}]"
    if isinstance(value, Mapping):
        items = [(str(view), image, f"{where}[{view!r}]") for view, image in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray, str)):
        items = [("", image, f"{where}[{i}]") for i, image in enumerate(value)]
    else:
        items = [("", value, where)]
    if not items:
        raise InMemoryCaseError(f"{where}: empty; expected at least one image (leave the modality out instead)")
    return items


def case_cohort(images: Mapping[str, Any] | None, clinical: Mapping[str, Any] | None = None, *,
                case_id: str = "case") -> Cohort:
    """One unlabelled case (subject and lesion ``case_id``) as an in-memory cohort; nothing is written.

    Args:
        images: ``{image modality: image}``, where an image is an :data:`ImageInput`, a list of them (views in
            list order, view names empty) or ``{view name: image}`` (e.g. ``{"CC": a, "MLO": b}``).
        clinical: the case's clinical values ``{column: value}`` (``None`` or NaN: missing, imputed as in
            training), or ``None`` for no clinical data.
        case_id: subject and lesion id.

    Returns:
        A :class:`~breastfusion.data.manifest.Cohort` rooted at :data:`IN_MEMORY_ROOT`, one manifest row per image
        (``path`` is a name, ``<in-memory>/{modality}/{i}``, that keys ``decoded``; views sort as a folder's do).

    Raises:
        InMemoryCaseError: no image, an unknown modality (naming the nearest) or a value of the wrong type.
        ImageReadError: an image that does not decode (the message starts with its key).
    """
    if images is not None and not isinstance(images, Mapping):
        raise InMemoryCaseError(f"images: got {type(images).__name__}; expected a dict {{modality: image(s)}}")
    if clinical is not None and not isinstance(clinical, Mapping):
        raise InMemoryCaseError(f"clinical: got {type(clinical).__name__}; expected a dict {{column: value}} for "
                                "one case")
    if not images:
        raise InMemoryCaseError("images: none given; a case needs at least one image (its lesion is defined by "
                                "its images), e.g. images={'ultrasound': array}")
    rows, decoded = [], {}
    for modality, value in images.items():
        if modality not in IMAGE_MODALITIES:
            near = difflib.get_close_matches(str(modality), IMAGE_MODALITIES, n=1)
            raise InMemoryCaseError(f"images: unknown modality {modality!r}; expected one of "
                                    f"{list(IMAGE_MODALITIES)}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        for view, image, name in _views(modality, value):
            path = f"<in-memory>/{modality}/{len(rows):04d}"  # zero-padded: slots keep the given order
            decoded[path] = decode_image(image, name=name)
            rows.append({"subject_id": case_id, "lesion_id": case_id, "modality": modality, "view": view,
                         "path": path, "label": np.nan})
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    table = (pd.DataFrame([{"subject_id": case_id, **dict(clinical)}]) if clinical is not None
             else pd.DataFrame({"subject_id": pd.Series(dtype=str)}))
    return Cohort(root=IN_MEMORY_ROOT, manifest=manifest, clinical=table, decoded=decoded)

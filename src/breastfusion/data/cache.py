"""A disk cache of decoded + preprocessed arrays, keyed by file content and parameters.

The key is SHA-256 over: the image file's content hash, the ROI inputs' content
(mask files or box), the preprocessing parameters (``params.to_dict()``) and
:data:`PIPELINE_VERSION`. Renaming or moving a file keeps its entry; changing
a pixel or a parameter misses. Entries are ``.npy`` files written to a
temporary name and renamed into place (atomic on POSIX), so several processes
may read and fill one cache at once; a half-written or corrupt entry is never
visible, and an unreadable one is recomputed.

Location: ``$BREASTFUSION_CACHE`` or ``~/.cache/breastfusion/arrays``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from breastfusion.data.preprocess import Box, Params, PreprocessError, align_mask, preprocess
from breastfusion.data.readers import read_image

__all__ = ["PIPELINE_VERSION", "ArrayCache", "CacheInfo", "CohortImages", "default_cache_dir", "file_digest",
           "load_lesion_mask", "load_prepared", "preprocess_cohort", "read_mask", "roi_inputs"]

#: Bump when decoding or preprocessing code changes what it outputs for the same parameters.
# 2: DICOM colour, palette, multi-frame and no-window rules (data.dicom);
# 3: faint colour tints are not overlays (readers.CHROMA_MIN, preprocess.MAX_OVERLAY_COLOUR_FRACTION).
PIPELINE_VERSION = "3"
_CHUNK = 1 << 20
_digests: dict[tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    """``$BREASTFUSION_CACHE`` if set, else ``~/.cache/breastfusion/arrays``."""
    env = os.environ.get("BREASTFUSION_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "breastfusion" / "arrays"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, mtime) within this process."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _digests.get(memo)
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
        digest = _digests[memo] = hasher.hexdigest()
    return digest


@dataclass
class CacheInfo:
    """Where the cache is and what it holds."""

    root: Path
    entries: int
    bytes: int


class ArrayCache:
    """Content-addressed ``.npy`` store.

    Args:
        root: the folder (created on first write); default :func:`default_cache_dir`.
        enabled: ``False`` bypasses the cache (always compute, never store): ``--no-cache``.
    """

    def __init__(self, root: str | Path | None = None, *, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def key(self, path: str | Path, params: dict, *, extra: Sequence[str] = ()) -> str:
        """The entry key of ``path`` preprocessed with ``params`` (plus ``extra`` strings, e.g. ROI hashes)."""
        blob = json.dumps({"file": file_digest(path), "params": params, "extra": list(extra),
                           "version": PIPELINE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The stored array, or ``None`` if absent or unreadable."""
        if not self.enabled:
            return None
        try:
            return np.load(self._entry(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def put(self, key: str, array: np.ndarray) -> None:
        """Store ``array`` atomically (temporary file in the same folder, then rename)."""
        if not self.enabled:
            return
        entry = self._entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def info(self) -> CacheInfo:
        """Number of entries and their total size."""
        files = list(self.root.glob("*/*.npy")) if self.root.is_dir() else []
        return CacheInfo(self.root, len(files), sum(f.stat().st_size for f in files))

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        n = self.info().entries
        if self.root.is_dir():
            for sub in self.root.iterdir():
                if sub.is_dir() and len(sub.name) == 2:
                    shutil.rmtree(sub, ignore_errors=True)
        return n


def read_mask(paths: Sequence[str | Path]) -> np.ndarray:
    """The union of one image's ROI mask files, as a boolean (H, W) array (any non-zero pixel is inside).

    Raises:
        ImageReadError: a mask file cannot be read, naming it.
    """
    from PIL import Image

    from breastfusion.data.readers import ImageReadError

    union = None
    for path in paths:
        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L")) > 0
        except OSError as exc:
            raise ImageReadError(f"{path}: cannot read ROI mask ({exc})") from exc
        union = mask if union is None else union | mask
    return union


def load_prepared(path: str | Path, params: Params, *, cache: ArrayCache | None = None,
                  roi_masks: Sequence[str | Path] = (), roi: Box | None = None) -> np.ndarray:
    """Decode and preprocess one image, through the cache when one is given.

    Args:
        path: the image file.
        params: the modality's preprocessing parameters.
        cache: an :class:`ArrayCache`; ``None`` computes without caching.
        roi_masks: mask files (their union is the ROI) when ``params.roi == "mask"``.
        roi: (top, left, bottom, right) when ``params.roi == "box"``.

    Returns:
        uint8 (S, S).

    Raises:
        ImageReadError: the image or a mask cannot be decoded.
        PreprocessError: the ROI does not fit the image.
    """
    def extra() -> list[str]:
        if params.roi in ("box", "predicted"):
            return [json.dumps(list(roi) if roi is not None else None)]
        return [file_digest(m) for m in roi_masks] if params.roi == "mask" else []

    def compute() -> np.ndarray:
        mask = read_mask(roi_masks) if params.roi == "mask" and roi_masks else None
        return preprocess(read_image(path), params, roi_mask=mask, roi=roi).pixels

    return _through_cache(cache, path, params, extra, compute)


def _through_cache(cache: ArrayCache | None, path: str | Path, params: Params, extra: Callable[[], list[str]],
                   compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, or the cache's entry for (``path``'s content, ``params``, ``extra()``), stored on a miss."""
    if cache is None or not cache.enabled:
        return compute()
    key = cache.key(path, params.to_dict(), extra=extra())
    hit = cache.get(key)
    if hit is not None:
        cache.hits += 1
        return hit
    cache.misses += 1
    array = compute()
    cache.put(key, array)
    return array


def load_lesion_mask(path: str | Path, params: Params, mask_files: Sequence[str | Path], *,
                     cache: ArrayCache | None = None, roi: Box | None = None) -> np.ndarray:
    """One image's lesion mask (the union of ``mask_files``) through the image's preprocessing geometry
    (:func:`~breastfusion.data.preprocess.align_mask`), through the cache when one is given.

    Returns:
        uint8 (S, S): the share of each pixel inside the lesion, times 255.

    Raises:
        ImageReadError: the image or a mask cannot be decoded.
        PreprocessError: the mask's size differs from the image's, or the ROI does not fit the image.
    """
    def compute() -> np.ndarray:
        image, mask = read_image(path), read_mask(mask_files)
        if mask.shape != image.pixels.shape:
            raise PreprocessError(f"{path}: its lesion mask ({', '.join(str(m) for m in mask_files)}) is "
                                  f"{mask.shape[0]}x{mask.shape[1]} px, the image {image.pixels.shape[0]}x"
                                  f"{image.pixels.shape[1]}; a mask must cover its image pixel for pixel")
        prepared = preprocess(image, params, roi_mask=mask, roi=roi)
        return np.rint(align_mask(mask, prepared, params) * 255).astype(np.uint8)

    return _through_cache(cache, path, params, lambda: ["lesion-mask", *(file_digest(m) for m in mask_files),
                                                        json.dumps(list(roi) if roi else None)], compute)


@dataclass
class CohortImages:
    """Preprocessed images of a manifest, from :func:`preprocess_cohort`.

    Attributes:
        arrays: ``{absolute path: uint8 (S, S)}`` for every image that was read.
        failures: ``[{"path", "error"}]`` for every image that was not.
        excluded: the failed paths that were left out because ``exclude_unreadable`` was set (else empty).
        params: ``{modality: params.to_dict()}`` as used (record these with the run).
        masks: ``{absolute path: uint8 (S, S)}`` lesion masks aligned with ``arrays`` (:func:`load_lesion_mask`),
            for the images of the ``masks_for`` modalities that list mask files; empty unless asked for.
    """

    arrays: dict[str, np.ndarray]
    failures: list[dict]
    excluded: list[str]
    params: dict[str, dict]
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def roi_inputs(row, root: Path) -> tuple[list[Path], Box | None]:
    """A manifest row's ROI: its mask files (``mask_path``, ``|``-separated, under ``root``) and its box.

    The box is ``roi_box`` as (top, left, bottom, right), or ``None`` when the row has none.
    """
    masks = [root / p for p in str(row.get("mask_path", "") or "").split("|") if p and p != "nan"]
    box_text = str(row.get("roi_box", "") or "")
    box = tuple(int(v) for v in box_text.split(",")) if box_text and box_text != "nan" else None
    return masks, box


def preprocess_cohort(cohort, params: dict[str, Params], *, cache: ArrayCache | None = None,
                      exclude_unreadable: bool = False, on_image=None,
                      masks_for: Collection[str] = ()) -> CohortImages:
    """Decode and preprocess every image of a cohort, collecting every failure.

    Args:
        cohort: a :class:`breastfusion.data.manifest.Cohort`; the rows it holds decoded (``cohort.decoded``, a case
            held in memory) are preprocessed from those images, never through a file or the cache.
        params: ``{modality: params}``; rows of other modalities are skipped.
        cache: an :class:`ArrayCache` (``None`` or ``enabled=False``: decode every time).
        exclude_unreadable: leave unreadable images out (listed in ``excluded``) instead of raising.
        on_image: called after each image (progress).
        masks_for: image modalities whose lesion masks (manifest ``mask_path``) are also prepared, aligned with
            their images (``masks``: mask supervision); a mask that cannot be read fails its row like its image.

    Raises:
        ImageReadError: some images could not be read and ``exclude_unreadable`` is not set; the message
            lists every one with its reason.
    """
    from breastfusion.data.readers import ImageReadError

    arrays, failures, lesion_masks = {}, [], {}
    decoded = cohort.decoded or {}
    for row in cohort.manifest.to_dict("records"):
        if row["modality"] not in params:
            continue
        modality_params = params[row["modality"]]
        masks, box = roi_inputs(row, cohort.root)
        try:
            if row["path"] in decoded:
                arrays[row["path"]] = preprocess(decoded[row["path"]], modality_params, roi=box).pixels
            else:
                arrays[row["path"]] = load_prepared(row["path"], modality_params, cache=cache, roi_masks=masks,
                                                    roi=box)
                if masks and row["modality"] in masks_for:
                    lesion_masks[row["path"]] = load_lesion_mask(row["path"], modality_params, masks, cache=cache,
                                                                 roi=box)
        except (ImageReadError, PreprocessError, FileNotFoundError) as exc:
            message = str(exc) if str(row["path"]) in str(exc) else f"{row['path']}: {exc}"
            failures.append({"path": row["path"], "error": message})
        if on_image is not None:
            on_image()
    if failures and not exclude_unreadable:
        listed = "\n  - ".join(f["error"] for f in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise ImageReadError(f"{len(failures)} of {len(arrays) + len(failures)} image(s) could not be read "
                             f"(pass exclude_unreadable / --exclude-unreadable to leave them out, recorded):"
                             f"\n  - {listed}{more}")
    return CohortImages(arrays, failures, [f["path"] for f in failures] if exclude_unreadable else [],
                        {m: p.to_dict() for m, p in params.items()},
                        {p: m for p, m in lesion_masks.items() if p in arrays})

"""In-fold lesion localisation: ``preprocess.roi: predicted``, from cross-validation to a bundle's predictions.

A branch with ``roi: predicted`` sees each image cropped to its lesion, as with ``roi: mask``, but the
lesion of a held-out or new image is found by a localiser (:mod:`breastfusion.models.localiser`), never
read from a reader's mask:

* in each fold the localiser is fitted on the lesion masks of the images the fold's networks are fitted on
  (never its validation or test images);
* the fitting images are cropped to their reader's mask (``roi: mask``: the lesion the label is about), or,
  with ``localiser.fit_crops: cross_fitted``, to the box of a localiser fitted on the fold's other fitting
  images (the fitting lesions split into parts by subject, as stacking does): the networks then learn from
  crops with the errors the held-out crops have, instead of perfect ones;
* the validation and test images are cropped to the localiser's box, widened by ``roi_margin`` like a mask's;
* a bundle keeps every fold's localiser and boxes a new image with the mean of their probability maps;
* with ``localiser.views: crop_and_frame`` each image also gives the branch its whole frame, as a second view
  (view slots after the crops), so a box that missed the lesion does not leave the network blind.

So cross-validation needs a mask for every image (each is a fitting image in some fold), and prediction none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from breastfusion.config import LocaliserConfig
from breastfusion.data.cache import ArrayCache, CohortImages, preprocess_cohort, read_mask, roi_inputs
from breastfusion.data.manifest import Cohort
from breastfusion.data.preprocess import Params, params_for, preprocess
from breastfusion.data.readers import ImageData, read_image
from breastfusion.data.tensors import LesionImages, append_views, build_lesion_images
from breastfusion.evaluation.splits import subject_folds
from breastfusion.models.localiser import (box_from_probs, box_iou, build_localiser, fit_localiser,
                                           frame_box_to_image, predict_lesion_probs)

__all__ = ["predicted_roi_modalities", "reader_crop_params", "localiser_input_params", "localiser_frames",
           "fit_fold_localiser", "locate", "crop_to_predicted", "save_localiser", "load_localiser",
           "localiser_from_state", "with_whole_frames", "run_images",
           "localiser_tag", "CROP_PLAN", "cross_fit_parts", "LocalisationError", "require_masks"]

Box = tuple[int, int, int, int]


class LocalisationError(ValueError):
    """A localiser cannot be fitted or applied; the message names the modality and what is missing."""


def predicted_roi_modalities(params: dict[str, Params]) -> list[str]:
    """The image modalities whose preprocessing crops to a localiser's box (``roi: predicted``)."""
    return [m for m, p in params.items() if p.roi == "predicted"]


def reader_crop_params(params: Params) -> Params:
    """The fitting images' preprocessing of a ``roi: predicted`` modality: the same, cropped to the reader's mask."""
    return dataclasses.replace(params, roi="mask")


def localiser_input_params(modality: str, cfg: LocaliserConfig) -> Params:
    """What a localiser sees: the modality's whole-frame preprocessing at ``cfg.image_size``."""
    return params_for(modality, size=cfg.image_size)


#: Settings that decide which images are cropped by which localiser, not a localiser's weights: left out of the
#: tag, so the fold localisers of a run are reused when only these change.
CROP_PLAN = frozenset({"fit_crops", "cross_fit_folds"})


def localiser_tag(cfg: LocaliserConfig) -> str:
    """A short hash of the localiser settings (its checkpoints are filed under it, so a changed setting retrains)."""
    material = cfg.model_dump(mode="json", exclude=set(CROP_PLAN))
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]


def cross_fit_parts(lesions: pd.DataFrame, positions: np.ndarray, n_parts: int,
                    seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``localiser.fit_crops: cross_fitted``: a fold's fitting positions split into ``n_parts`` parts grouped by
    subject and stratified; for each part, (the positions its localiser is fitted on, the part's positions).

    Raises:
        LocalisationError: too few subjects of a class for that many parts.
    """
    try:
        parts = subject_folds(lesions.iloc[positions], n_splits=n_parts, seed=seed)
    except ValueError as exc:
        raise LocalisationError(f"localiser.fit_crops: cross_fitted splits each fold's fitting lesions into "
                                f"{n_parts} parts (localiser.cross_fit_folds): {exc}") from None
    return [(positions[fit], positions[part]) for fit, part in parts]


def _image_rows(cohort: Cohort, modality: str, positions: np.ndarray | None = None,
                excluded: Sequence[str] = ()) -> pd.DataFrame:
    """Manifest rows of ``modality`` for the lesions at ``positions`` (all: ``None``), in view-slot order (as
    :func:`~breastfusion.data.tensors.build_lesion_images` fills slots), with ``position`` and ``slot`` columns."""
    lesion_ids = cohort.lesions["lesion_id"].tolist()
    wanted = lesion_ids if positions is None else [lesion_ids[i] for i in positions]
    manifest = cohort.manifest
    rows = manifest[(manifest["modality"] == modality) & ~manifest["path"].isin(list(excluded))]
    rows = rows.sort_values(["lesion_id", "view", "path"])
    rows = rows.assign(slot=rows.groupby("lesion_id").cumcount().to_numpy(),
                       position=rows["lesion_id"].map({lid: i for i, lid in enumerate(lesion_ids)}).to_numpy())
    return rows[rows["lesion_id"].isin(set(wanted))]


def require_masks(cohort: Cohort, modality: str) -> None:
    """Cross-validation with ``roi: predicted`` fits on reader-mask crops and trains the localiser on the masks,
    and every image is a fitting image in some fold, so every ``modality`` image needs a mask.

    Raises:
        LocalisationError: naming up to five images without one (and how many there are).
    """
    rows = cohort.manifest[cohort.manifest["modality"] == modality]
    lacking = [str(row["path"]) for row in rows.to_dict("records") if not roi_inputs(row, cohort.root)[0]]
    if lacking:
        more = f" and {len(lacking) - 5} more" if len(lacking) > 5 else ""
        raise LocalisationError(
            f"model.{modality}.preprocess.roi: predicted: cross-validation crops each fitting image to its reader's "
            f"lesion mask and trains the lesion localiser on those masks, so every {modality} image needs one "
            f"(manifest column mask_path); {len(lacking)} of {len(rows)} have none: {', '.join(lacking[:5])}{more}. "
            "Prediction with the exported bundle needs no masks")


def localiser_frames(cohort: Cohort, modality: str, cfg: LocaliserConfig, *, cache: ArrayCache | None = None,
                     exclude_unreadable: bool = False, on_image: Callable[[], None] | None = None) -> CohortImages:
    """Every ``modality`` image of the cohort as the localiser sees it, with its lesion mask aligned to it."""
    return preprocess_cohort(cohort, {modality: localiser_input_params(modality, cfg)}, cache=cache,
                             exclude_unreadable=exclude_unreadable, masks_for=(modality,), on_image=on_image)


def fit_fold_localiser(cohort: Cohort, frames: CohortImages, positions: np.ndarray, modality: str,
                       cfg: LocaliserConfig, *, seed: int,
                       on_epoch: Callable[[int, int, float], None] | None = None) -> nn.Module:
    """A localiser fitted on the masked ``modality`` images of the lesions at ``positions`` (a fold's fitting
    lesions).

    Raises:
        LocalisationError: fewer than two of those images have a lesion mask (manifest ``mask_path``).
    """
    rows = _image_rows(cohort, modality, positions)
    paths = [p for p in rows["path"] if p in frames.masks]
    if len(paths) < 2:
        raise LocalisationError(f"preprocess.roi: predicted for {modality}: the localiser learns from the fitting "
                                f"images' lesion masks (manifest column mask_path), but {len(paths)} of "
                                f"{len(rows)} fitting {modality} images have one; at least 2 are needed")
    return fit_localiser(np.stack([frames.arrays[p] for p in paths]), np.stack([frames.masks[p] for p in paths]),
                         cfg, seed=seed, on_epoch=on_epoch)


def locate(models: Sequence[nn.Module], images: Sequence[ImageData], modality: str, cfg: LocaliserConfig) -> list[Box]:
    """Each image's lesion box (top, left, bottom, right) on the image itself, from the mean of the
    ``models``' probability maps on its whole frame."""
    if not models:
        raise LocalisationError("no localiser to locate lesions with")
    if not images:
        return []
    params = localiser_input_params(modality, cfg)
    prepared = [preprocess(image, params) for image in images]
    frames = np.stack([p.pixels for p in prepared])
    probs = np.mean([predict_lesion_probs(model, frames) for model in models], axis=0)
    return [frame_box_to_image(box_from_probs(prob, cfg.threshold), p.crop, cfg.image_size)
            for prob, p in zip(probs, prepared)]


def crop_to_predicted(images: LesionImages, cohort: Cohort, modality: str, params: Params,
                      models: Sequence[nn.Module], cfg: LocaliserConfig, positions: np.ndarray | None = None,
                      *, decoded: dict[str, ImageData] | None = None) -> tuple[LesionImages, pd.DataFrame]:
    """``images`` with the ``modality`` images of the lesions at ``positions`` (all: ``None``) replaced by crops
    to the localisers' boxes (``params``, a ``roi: predicted`` preprocessing); the others are kept as they are.

    Returns:
        (the new images, one row per cropped image: ``path``, ``lesion_id``, ``top``, ``left``, ``bottom``,
        ``right`` of the box on the image, and ``iou`` with the reader's mask box where the manifest lists a
        mask, else NaN: how well the localiser found that lesion).
    """
    decoded = decoded if decoded is not None else (cohort.decoded or {})
    rows = _image_rows(cohort, modality, positions, images.excluded)
    sources = [decoded[p] if p in decoded else read_image(cohort.root / p if not Path(p).is_absolute() else p)
               for p in rows["path"]]
    boxes = locate(models, sources, modality, cfg)
    stack = images.images[modality].clone()
    report = []
    for (_, row), image, box in zip(rows.iterrows(), sources, boxes, strict=True):
        stack[int(row["position"]), int(row["slot"]), 0] = torch.from_numpy(preprocess(image, params, roi=box).pixels)
        mask_files, _ = roi_inputs(row, cohort.root)
        iou = float("nan")
        if mask_files:
            mask = read_mask(mask_files)
            r, c = np.nonzero(mask)
            if r.size:
                iou = box_iou(box, (int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1))
        report.append({"path": row["path"], "lesion_id": row["lesion_id"], "top": box[0], "left": box[1],
                       "bottom": box[2], "right": box[3], "iou": iou})
    out = LesionImages(images.lesion_ids, {**images.images, modality: stack}, images.views, excluded=images.excluded,
                       params=images.params, masks=images.masks, mask_views=images.mask_views)
    return out, pd.DataFrame(report, columns=["path", "lesion_id", "top", "left", "bottom", "right", "iou"])


def with_whole_frames(images: LesionImages, cohort: Cohort, modality: str, params: Params, cfg: LocaliserConfig,
                      **build: Any) -> LesionImages:
    """With ``localiser.views: crop_and_frame``, ``images`` with each lesion's whole ``modality`` frames (the same
    preprocessing without the crop) appended as extra view slots after its crops; otherwise ``images`` unchanged.

    ``build``: keyword arguments of :func:`~breastfusion.data.tensors.build_lesion_images` (cache, masks_for, ...).
    """
    if cfg.views != "crop_and_frame":
        return images
    whole = build_lesion_images(cohort, {modality: dataclasses.replace(params, roi="none")}, **build)
    return append_views(images, whole, modality)


def run_images(cohort: Cohort, params: dict[str, Params], model: Any, **build: Any) -> LesionImages:
    """A run's images as its networks are fitted on them: a ``roi: predicted`` modality cropped to the reader's
    mask (with its whole frames appended for ``views: crop_and_frame``), the others as ``params`` say; held-out
    images get their fold localiser's crop later (:func:`crop_to_predicted`).

    ``model``: the config's ``model`` section; ``build``: keyword arguments of
    :func:`~breastfusion.data.tensors.build_lesion_images` (cache, exclude_unreadable, on_image, masks_for).
    """
    predicted = predicted_roi_modalities(params)
    images = build_lesion_images(cohort, {m: reader_crop_params(p) if m in predicted else p
                                          for m, p in params.items()}, **build)
    for m in predicted:
        whole_build = {**build, "masks_for": tuple(x for x in build.get("masks_for", ()) if x == m)}
        images = with_whole_frames(images, cohort, m, params[m], getattr(model, m).localiser, **whole_build)
    images.params.update({m: params[m].to_dict() for m in predicted})
    return images


def save_localiser(path: Path, model: nn.Module, cfg: LocaliserConfig) -> None:
    """A localiser's weights as safetensors (with its settings in the metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
    save_file(state, str(path), metadata={"localiser": json.dumps(cfg.model_dump(mode="json"), sort_keys=True)})


def load_localiser(path: Path, cfg: LocaliserConfig) -> nn.Module:
    """A localiser saved by :func:`save_localiser`, in eval mode on the CPU.

    Raises:
        LocalisationError: the file's weights do not fit a localiser built from ``cfg`` (naming the file).
    """
    return localiser_from_state(load_file(str(path)), cfg, label=str(path))


def localiser_from_state(state: dict[str, torch.Tensor], cfg: LocaliserConfig, *, label: str) -> nn.Module:
    """A localiser built from ``cfg`` with the weights ``state`` (read from ``label``), in eval mode.

    Raises:
        LocalisationError: the weights do not fit (naming ``label``).
    """
    model = build_localiser(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise LocalisationError(f"{label}: not a localiser with settings {cfg.model_dump(mode='json')} "
                                f"({str(exc).splitlines()[0]})") from None
    return model.eval()

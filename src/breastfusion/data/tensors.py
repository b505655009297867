"""Turn a cohort into per-lesion tensors: the multimodal sample dict every model reads.

A sample is a dict keyed by modality:

* ``{image modality}``: uint8 (V, 1, S, S), V view slots (e.g. CC and MLO),
  ``{image modality}_views``: bool (V,) which slots hold an image;
* ``clinical``: float32 (F,) preprocessed features, ``clinical_present``: bool;
* ``label``: float32 (1 = malignant);
* with mask supervision (training lesions only), ``{image modality}_mask``: uint8 (V, 1, S, S) lesion masks
  aligned with the images, and ``{image modality}_mask_views``: bool (V,) which slots have one.

Images are decoded once per run and kept in memory as uint8; conversion to
float, normalisation and augmentation happen on the batch, in the model step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from breastfusion.data.cache import ArrayCache, preprocess_cohort
from breastfusion.data.manifest import Cohort
from breastfusion.data.preprocess import Params

__all__ = ["LesionImages", "build_lesion_images", "append_views", "LesionDataset", "clinical_features_for",
           "modality_present", "modalities_used"]


def modality_present(tensors: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
    """(N,) bool: which samples of a batch (or of :attr:`LesionDataset.tensors`) have ``modality``."""
    if modality == "clinical":
        return tensors["clinical_present"].bool()
    return tensors[f"{modality}_views"].any(dim=1)


def modalities_used(tensors: dict[str, torch.Tensor], modalities: tuple[str, ...]) -> list[str]:
    """Per sample, the modalities it has, ``;``-joined in ``modalities`` order."""
    present = {m: modality_present(tensors, m).cpu().numpy() for m in modalities}
    n = len(next(iter(present.values()))) if present else 0
    return [";".join(m for m in modalities if present[m][i]) for i in range(n)]


class LesionImages:
    """Decoded images of every lesion, per image modality.

    Attributes:
        lesion_ids: lesion order shared by every array.
        images: ``{modality: uint8 tensor (L, V, 1, S, S)}``.
        views: ``{modality: bool tensor (L, V)}``.
        excluded: unreadable image paths left out (only with ``exclude_unreadable``).
        params: the preprocessing parameters used, per modality (recorded with the run).
        masks: ``{modality: uint8 tensor (L, V, 1, S, S)}`` lesion masks aligned with ``images``, for the
            modalities asked for (``build_lesion_images(masks_for=...)``); zeros where a slot has none.
        mask_views: ``{modality: bool tensor (L, V)}``: which slots have a mask.
    """

    def __init__(self, lesion_ids: list[str], images: dict[str, torch.Tensor], views: dict[str, torch.Tensor],
                 *, excluded: list[str] | None = None, params: dict[str, dict] | None = None,
                 masks: dict[str, torch.Tensor] | None = None, mask_views: dict[str, torch.Tensor] | None = None):
        self.lesion_ids = lesion_ids
        self.images = images
        self.views = views
        self.excluded = excluded or []
        self.params = params or {}
        self.masks = masks or {}
        self.mask_views = mask_views or {}


def build_lesion_images(
    cohort: Cohort, params: dict[str, Params], *, cache: ArrayCache | None = None, exclude_unreadable: bool = False,
    on_image: Callable[[], None] | None = None, masks_for: tuple[str, ...] = (),
) -> LesionImages:
    """Decode and preprocess every image of the requested modalities into per-lesion view slots.

    Args:
        cohort: a validated cohort.
        params: ``{image modality: preprocessing parameters}``; modalities not listed are skipped.
        cache: the preprocessed-array cache (``None``: decode every time).
        exclude_unreadable: leave unreadable images out (recorded in ``excluded``) instead of failing.
        on_image: called after each image (progress).
        masks_for: image modalities whose lesion masks (manifest ``mask_path``) are prepared too, aligned with
            the images (``LesionImages.masks``), for mask supervision.

    Raises:
        ImageReadError: listing every unreadable image, unless ``exclude_unreadable``.
    """
    prepared = preprocess_cohort(cohort, params, cache=cache, exclude_unreadable=exclude_unreadable,
                                 on_image=on_image, masks_for=masks_for)
    lesion_ids = cohort.lesions["lesion_id"].tolist()
    row_of = {lid: i for i, lid in enumerate(lesion_ids)}
    images, views, masks, mask_views = {}, {}, {}, {}
    for modality, modality_params in params.items():
        rows = cohort.manifest[(cohort.manifest["modality"] == modality)
                               & cohort.manifest["path"].isin(list(prepared.arrays))]
        rows = rows.sort_values(["lesion_id", "view", "path"])
        slot = torch.as_tensor(rows.groupby("lesion_id").cumcount().to_numpy(copy=True))
        n_views = int(slot.max()) + 1 if len(rows) else 1
        size = modality_params.size
        stack = torch.zeros(len(lesion_ids), n_views, 1, size, size, dtype=torch.uint8)
        present = torch.zeros(len(lesion_ids), n_views, dtype=torch.bool)
        if len(rows):
            pixels = np.stack([prepared.arrays[p] for p in rows["path"]])
            lesion_rows = torch.as_tensor(rows["lesion_id"].map(row_of).to_numpy(copy=True))
            stack[lesion_rows, slot, 0] = torch.from_numpy(pixels)
            present[lesion_rows, slot] = True
        images[modality], views[modality] = stack, present
        if modality in masks_for:
            has = torch.as_tensor(rows["path"].isin(list(prepared.masks)).to_numpy(copy=True))
            masks[modality] = torch.zeros_like(stack)
            mask_views[modality] = torch.zeros_like(present)
            if bool(has.any()):
                masks[modality][lesion_rows[has], slot[has], 0] = torch.from_numpy(
                    np.stack([prepared.masks[p] for p in rows["path"][has.numpy()]]))
                mask_views[modality][lesion_rows[has], slot[has]] = True
    return LesionImages(lesion_ids, images, views, excluded=prepared.excluded, params=prepared.params,
                        masks=masks, mask_views=mask_views)


def append_views(images: LesionImages, extra: LesionImages, modality: str) -> LesionImages:
    """``images`` with ``extra``'s ``modality`` view slots appended after its own (the same lesions, the same image
    size): e.g. each lesion's whole frames beside its lesion crops. Masks follow their slots (zeros where the other
    side has none)."""
    if extra.lesion_ids != images.lesion_ids:
        raise ValueError("append_views needs the same lesions in the same order")
    stack = torch.cat([images.images[modality], extra.images[modality]], dim=1)
    views = torch.cat([images.views[modality], extra.views[modality]], dim=1)
    masks, mask_views = dict(images.masks), dict(images.mask_views)
    if modality in images.masks or modality in extra.masks:
        def side(src: LesionImages) -> tuple[torch.Tensor, torch.Tensor]:
            if modality in src.masks:
                return src.masks[modality], src.mask_views[modality]
            return torch.zeros_like(src.images[modality]), torch.zeros_like(src.views[modality])

        (m_a, v_a), (m_b, v_b) = side(images), side(extra)
        masks[modality], mask_views[modality] = torch.cat([m_a, m_b], dim=1), torch.cat([v_a, v_b], dim=1)
    return LesionImages(images.lesion_ids, {**images.images, modality: stack}, {**images.views, modality: views},
                        excluded=sorted(set(images.excluded) | set(extra.excluded)), params=images.params,
                        masks=masks, mask_views=mask_views)


class LesionDataset(Dataset):
    """Samples for a subset of lesions and modalities (see the module docstring for keys).

    Args:
        images: the decoded images of the cohort.
        index: positions (into ``images.lesion_ids``) of this dataset's lesions.
        labels: 0/1 per lesion in ``index`` order.
        modalities: the modalities this network reads.
        clinical: float32 (len(index), F) features, or ``None``.
        clinical_present: bool (len(index),), or ``None``.
        with_masks: include the lesion masks ``images`` holds for these modalities (training lesions of a
            mask-supervised network; never held-out ones).
    """

    def __init__(self, images: LesionImages, index: np.ndarray, labels: np.ndarray, modalities: tuple[str, ...],
                 clinical: np.ndarray | None = None, clinical_present: np.ndarray | None = None, *,
                 with_masks: bool = False):
        self.tensors: dict[str, torch.Tensor] = {"label": torch.tensor(np.asarray(labels), dtype=torch.float32)}
        index_t = torch.as_tensor(index, dtype=torch.long)
        for modality in modalities:
            if modality == "clinical":
                if clinical is None or clinical_present is None:
                    raise ValueError("the clinical modality needs clinical features and their presence")
                self.tensors["clinical"] = torch.tensor(np.asarray(clinical), dtype=torch.float32)
                self.tensors["clinical_present"] = torch.tensor(np.asarray(clinical_present), dtype=torch.bool)
            else:
                self.tensors[modality] = images.images[modality][index_t]
                self.tensors[f"{modality}_views"] = images.views[modality][index_t]
                if with_masks and modality in images.masks:
                    self.tensors[f"{modality}_mask"] = images.masks[modality][index_t]
                    self.tensors[f"{modality}_mask_views"] = images.mask_views[modality][index_t]

    def __len__(self) -> int:
        return len(self.tensors["label"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[i] for key, value in self.tensors.items()}


def clinical_features_for(lesions: pd.DataFrame, clinical: pd.DataFrame, preprocessor) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, F) and presence (n,) for each lesion's subject; absent subjects get zeros."""
    table = clinical.set_index("subject_id")
    present = lesions["subject_id"].isin(table.index).to_numpy()
    features = np.zeros((len(lesions), preprocessor.n_features_), dtype=np.float32)
    if present.any():
        rows = table.loc[lesions.loc[present, "subject_id"]].reset_index()
        features[present] = preprocessor.transform(rows)
    return features, present

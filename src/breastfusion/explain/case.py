"""Explain one new case with a bundle: modality contributions and heatmaps, averaged over the fold networks.

A bundle predicts a case with all K fold networks (:mod:`breastfusion.predict`); the explanation
follows the same ensemble. For each fold network:

* exact modality Shapley values (:func:`~breastfusion.explain.shapley.modality_shapley`), the empty
  coalition worth that fold's no-information prediction (the prevalence of its calibration lesions,
  which are its training lesions or a subset of them, under the run's sampler and class weights);
* one heatmap per image (:func:`~breastfusion.explain.cams.compute_cams`, the malignant logit as
  target, the target layer chosen per architecture), the rest of the case held fixed.

The Shapley values are averaged over folds (they still sum to the mean full prediction minus the
mean empty one); the heatmaps, each normalised to [0, 1] by pytorch-grad-cam, are averaged over folds.
A fold network that is a seed ensemble (``training.seeds > 1``) is one player in the Shapley game (its mean
logit) and contributes the mean of its members' heatmaps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from breastfusion.data.manifest import IMAGE_MODALITIES, Cohort
from breastfusion.data.tensors import LesionDataset, clinical_features_for, modality_present
from breastfusion.explain.cams import CAM_METHODS, compute_cams, image_model
from breastfusion.explain.shapley import modality_shapley, no_information_prob, shapley_shares
from breastfusion.data.transforms import prepare_batch

__all__ = ["ImageHeatmap", "CaseExplanation", "explain_case"]


@dataclass
class ImageHeatmap:
    """One image of the case: what the network saw (preprocessed, [0, 1]) and the fold-averaged heatmap."""

    modality: str
    view: str
    image: np.ndarray
    heatmap: np.ndarray


@dataclass
class CaseExplanation:
    """The explanation of one lesion.

    Attributes:
        lesion_id: the lesion explained.
        method: the heatmap method.
        phi: mean over folds of each modality's Shapley value (P(malignant) scale).
        shares: each modality's percent of the absolute output change (from ``phi``).
        full: mean over folds of the prediction with the modalities the lesion has.
        empty: mean over folds of the no-information prediction.
        heatmaps: one per image of the lesion.
    """

    lesion_id: str
    method: str
    phi: dict[str, float]
    shares: dict[str, float]
    full: float
    empty: float
    heatmaps: list[ImageHeatmap] = field(default_factory=list)


def explain_case(bundle, cohort: Cohort | str | Path | None = None, *, images: Mapping[str, Any] | None = None,
                 clinical: Mapping[str, Any] | None = None, lesion_id: str | None = None,
                 method: str = "gradcam") -> CaseExplanation:
    """Modality contributions and heatmaps of one lesion of ``cohort`` under ``bundle``'s fold networks.

    Args:
        bundle: a loaded :class:`~breastfusion.bundle.Bundle`.
        cohort: a cohort folder (labels optional), its manifest, or a loaded cohort.
        images, clinical: instead of ``cohort``, one case held in memory, as for
            :meth:`~breastfusion.bundle.Bundle.predict` (nothing is written).
        lesion_id: the lesion to explain (default: the first of the manifest).
        method: ``gradcam``, ``gradcam++`` or ``scorecam``.

    Raises:
        ValueError: unknown method or lesion, or a stage-2 bundle.
        BundleError: the lesion has none of the bundle's modalities.
    """
    from breastfusion.bundle import BundleError
    from breastfusion.predict import cohort_for, fit_to_bundle, localised_images

    if method not in CAM_METHODS:
        raise ValueError(f"unknown heatmap method {method!r}; expected one of {list(CAM_METHODS)}")
    if getattr(bundle, "stage2_learners", None) is not None:
        raise ValueError(f"bundle {bundle.root} predicts with a stage-2 learner on the networks' deep features; "
                         "case explanations cover network variants only (export one to explain it)")
    if getattr(bundle, "score_learners", None) is not None:
        raise ValueError(f"bundle {bundle.root} averages an image network with a clinical learner (score-level "
                         "fusion); case explanations cover network variants only (export one to explain it)")
    cohort = fit_to_bundle(bundle, cohort_for(bundle, cohort, images=images, clinical=clinical))
    lesions = cohort.lesions
    ids = lesions["lesion_id"].astype(str).tolist()
    lesion_id = ids[0] if lesion_id is None else str(lesion_id)
    if lesion_id not in ids:
        raise ValueError(f"lesion {lesion_id!r} is not in {cohort.root}; it has {ids[:10]}")
    pos = ids.index(lesion_id)
    images = localised_images(bundle, cohort)
    views = _view_names(cohort, lesion_id)
    training = bundle.config.training
    phis, fulls, empties = [], [], []
    maps: dict[tuple[str, int], list[np.ndarray]] = {}
    for k, net in enumerate(bundle.networks):
        clinical = (clinical_features_for(lesions.iloc[[pos]], cohort.clinical, bundle.clinical_preprocessors[k])
                    if bundle.clinical_preprocessors is not None else (None, None))
        data = LesionDataset(images, np.array([pos]), np.zeros(1, dtype=int), bundle.modalities, *clinical)
        batch = prepare_batch(data.tensors)
        if not any(bool(modality_present(batch, m).any()) for m in bundle.modalities):
            raise BundleError(f"lesion {lesion_id!r} has none of the bundle's modalities {list(bundle.modalities)}")
        calibration = bundle.calibration[bundle.calibration["fold"] == k]
        empty = no_information_prob(calibration["y"].to_numpy(), sampler=training.sampler,
                                    class_weights=training.class_weights)
        phi = modality_shapley(net, batch, empty=empty)
        phis.append({m: float(phi[f"phi_{m}"].iloc[0]) for m in bundle.modalities})
        fulls.append(float(phi["full"].iloc[0]))
        empties.append(float(phi["empty"].iloc[0]))
        for modality in (m for m in bundle.modalities if m in IMAGE_MODALITIES):
            present = batch[f"{modality}_views"][0]
            for slot in torch.nonzero(present).flatten().tolist():
                model = image_model(net, batch, modality, slot)
                heat, _ = compute_cams(model, (method,), target_class=1)
                maps.setdefault((modality, slot), []).append(heat[method])
    phi_mean = {m: float(np.mean([p[m] for p in phis])) for m in bundle.modalities}
    _, shares = shapley_shares(pd.DataFrame([{f"phi_{m}": v for m, v in phi_mean.items()}]))
    heatmaps = [ImageHeatmap(modality, views[modality][slot] if slot < len(views[modality]) else str(slot),
                             images.images[modality][pos, slot, 0].float().numpy() / 255.0,
                             np.mean(stack, axis=0))
                for (modality, slot), stack in maps.items()]
    return CaseExplanation(lesion_id, method, phi_mean, shares, float(np.mean(fulls)), float(np.mean(empties)),
                           heatmaps)


def _view_names(cohort: Cohort, lesion_id: str) -> dict[str, list[str]]:
    """View names per image modality in view-slot order (as :func:`build_lesion_images` orders them)."""
    rows = cohort.manifest[cohort.manifest["lesion_id"].astype(str) == lesion_id]
    return {m: rows[rows["modality"] == m].sort_values(["view", "path"])["view"].fillna("").astype(str).tolist()
            for m in IMAGE_MODALITIES}

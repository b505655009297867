"""Transforms of a modality-keyed batch: intensity normalisation, augmentation, modality dropout, flips.

A batch is the dict a :class:`~breastfusion.data.tensors.LesionDataset` yields: uint8 images
``{modality}`` (B, V, 1, H, W) with their view masks ``{modality}_views`` (B, V), ``clinical`` features with
``clinical_present``, and ``label``. Every function here takes such a batch (or one modality's images) and
returns a new one, so training (:class:`~breastfusion.training.module.LesionClassifier`), feature extraction,
ONNX export, prediction and explanation all prepare inputs through the same code, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from breastfusion.data.manifest import IMAGE_MODALITIES

__all__ = ["MEAN", "STD", "AffineRanges", "normalise_images", "augment_images", "augment_with_masks",
           "drop_modalities", "flip_images", "mix_batch", "prepare_batch"]

#: Intensity normalisation of [0, 1] images: ``(x - MEAN) / STD``.
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class AffineRanges:
    """How far the training augmentation's random affine warp may go (each drawn uniformly in ± the value).

    Attributes:
        zoom: relative scale change (0.1: 90% to 110%).
        rotation: degrees.
        shift: translation, as a fraction of the image side.
    """

    zoom: float = 0.1
    rotation: float = 10.0
    shift: float = 0.08


def normalise_images(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → the network's input scale (``(x - MEAN) / STD``)."""
    return (x - MEAN) / STD


def augment_images(x: torch.Tensor, *, modality: str, ranges: AffineRanges = AffineRanges()) -> torch.Tensor:
    """Random flips, an affine warp (by default rotation ±10°, scale ±10%, shift ±8%: ``ranges``), gain, and
    speckle for ultrasound.

    Args:
        x: images (B, V, C, H, W) in [0, 1].
        modality: ``mammography`` also flips top-bottom; ``ultrasound`` does not (posterior
            shadowing points away from the probe) but gets multiplicative speckle noise.
        ranges: how far the affine warp may go.
    """
    return augment_with_masks(x, None, modality=modality, ranges=ranges)[0]


def augment_with_masks(x: torch.Tensor, masks: torch.Tensor | None, *, modality: str,
                       ranges: AffineRanges = AffineRanges()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`augment_images`, moving lesion masks (B, V, 1, H, W) in [0, 1] with their images: the same flips
    and affine warp (the same random draws, so an image augments alike with or without its mask); gain and
    speckle touch the images only."""
    b, v = x.shape[:2]
    flat = x.reshape(b * v, *x.shape[2:])
    flat_masks = None if masks is None else masks.reshape(b * v, *masks.shape[2:])
    n = flat.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=x.device)

    def both(transform, where: torch.Tensor | None = None):
        nonlocal flat, flat_masks
        flat = transform(flat) if where is None else torch.where(where, transform(flat), flat)
        if flat_masks is not None:
            flat_masks = transform(flat_masks) if where is None else torch.where(where, transform(flat_masks),
                                                                                 flat_masks)

    both(lambda t: t.flip(-1), rand(n, 1, 1, 1) < 0.5)
    if modality == "mammography":
        both(lambda t: t.flip(-2), rand(n, 1, 1, 1) < 0.5)
    angle = (rand(n) - 0.5) * (2 * math.radians(ranges.rotation))
    scale = 1 + (rand(n) - 0.5) * (2 * ranges.zoom)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = (rand(n, 2) - 0.5) * (2 * ranges.shift)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)

    def warp(t: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta, list(t.shape), align_corners=False)
        return F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    both(warp)
    flat = flat * (1 + 0.1 * torch.randn(n, 1, 1, 1, device=x.device))
    if modality == "ultrasound":
        flat = flat * (1 + 0.1 * torch.randn_like(flat)).clamp(min=0)
    return flat.reshape(x.shape), None if masks is None else flat_masks.reshape(masks.shape)


def flip_images(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with every image modality mirrored left-right (the other keys untouched)."""
    return {k: (v.flip(-1) if k in IMAGE_MODALITIES else v) for k, v in batch.items()}


def drop_modalities(batch: dict[str, torch.Tensor], modalities: tuple[str, ...], p: float) -> dict[str, torch.Tensor]:
    """Hide each present modality of each sample with probability ``p``; a sample always keeps at least one."""
    flags = {m: (batch[f"{m}_views"].any(1) if m in IMAGE_MODALITIES else batch["clinical_present"])
             for m in modalities}
    present = torch.stack([flags[m] for m in modalities], dim=1)  # (B, M)
    drop = (torch.rand(present.shape, device=present.device) < p) & present
    emptied = ~(present & ~drop).any(dim=1, keepdim=True)
    # A sample that would lose everything keeps one of its modalities, chosen at random.
    keep = torch.zeros_like(drop).scatter_(1, (torch.rand(present.shape, device=present.device)
                                               * present).argmax(dim=1, keepdim=True), True)
    drop = drop & ~(emptied & keep)
    batch = dict(batch)
    for i, m in enumerate(modalities):
        if m in IMAGE_MODALITIES:
            batch[f"{m}_views"] = batch[f"{m}_views"] & ~drop[:, i:i + 1]
        else:
            batch["clinical_present"] = batch["clinical_present"] & ~drop[:, i]
    return batch


def mix_batch(batch: dict[str, torch.Tensor], labels: torch.Tensor, alpha: float
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mixup (Zhang et al., 2018) of a prepared training batch: each sample blended with another of the batch.

    One weight ``lam ~ Beta(alpha, alpha)`` per batch; every image modality, its lesion masks and the clinical
    features become ``lam * own + (1 - lam) * partner`` and the targets the same blend of the two labels (soft
    targets for the BCE loss). A view, a mask or the clinical table counts as present when either sample has it
    (a mask target only when both have one, so a lesion is never half-marked). Draws from torch's global
    generator, which the training step seeds per batch.

    Args:
        batch: a batch from :func:`prepare_batch` (normalised floats).
        labels: the batch's labels (B,), 0 / 1.
        alpha: the Beta distribution's concentration (> 0): small values keep most samples close to one image.

    Returns:
        (the mixed batch, the mixed targets (B,) in [0, 1]).
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha should be > 0, got {alpha!r}")
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(labels), device=labels.device)
    mixed = dict(batch)

    def blend(t: torch.Tensor) -> torch.Tensor:
        return lam * t + (1 - lam) * t[perm]

    for modality in IMAGE_MODALITIES:
        if modality not in batch:
            continue
        mixed[modality] = blend(batch[modality])
        mixed[f"{modality}_views"] = batch[f"{modality}_views"] | batch[f"{modality}_views"][perm]
        if f"{modality}_mask" in batch:
            mixed[f"{modality}_mask"] = blend(batch[f"{modality}_mask"])
            if f"{modality}_mask_views" in batch:
                mixed[f"{modality}_mask_views"] = (batch[f"{modality}_mask_views"]
                                                   & batch[f"{modality}_mask_views"][perm])
    if "clinical" in batch:
        mixed["clinical"] = blend(batch["clinical"])
        if "clinical_present" in batch:
            mixed["clinical_present"] = batch["clinical_present"] | batch["clinical_present"][perm]
    return mixed, blend(labels.float())


def prepare_batch(batch: dict[str, torch.Tensor], *, augment: bool = False, modality_dropout: float = 0.0,
                  modalities: tuple[str, ...] = (), ranges: AffineRanges = AffineRanges()
                  ) -> dict[str, torch.Tensor]:
    """uint8 images → normalised floats (no augmentation by default: what evaluation, prediction, explanation
    and export feed the network); for a training batch, augmentation and modality dropout as asked.

    Args:
        batch: a modality-keyed batch (not changed; a new dict is returned).
        augment: :func:`augment_images` each image modality (between scaling to [0, 1] and normalising); lesion
            masks (``{modality}_mask``, uint8) become [0, 1] floats and move with their images.
        modality_dropout: :func:`drop_modalities`' chance to hide each present modality of a sample.
        modalities: the network's modalities, which modality dropout may hide (needed when it is > 0).
        ranges: how far the augmentation's affine warp may go.
    """
    batch = dict(batch)
    for modality in IMAGE_MODALITIES:
        if modality not in batch:
            continue
        x = batch[modality].float().div_(255.0)  # (B, V, 1, H, W)
        masks = batch[f"{modality}_mask"].float().div_(255.0) if f"{modality}_mask" in batch else None
        if augment:
            x, masks = augment_with_masks(x, masks, modality=modality, ranges=ranges)
        batch[modality] = normalise_images(x)
        if masks is not None:
            batch[f"{modality}_mask"] = masks
    if modality_dropout > 0:
        batch = drop_modalities(batch, modalities, modality_dropout)
    return batch

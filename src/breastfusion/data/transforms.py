"""Transforms of a modality-keyed batch: intensity normalisation, augmentation, modality dropout, flips.

A batch is the dict a :class:`~breastfusion.data.tensors.LesionDataset` yields: uint8 images
``{modality}`` (B, V, 1, H, W) with their view masks ``{modality}_views`` (B, V), ``clinical`` features with
``clinical_present``, and ``label``. Every function here takes such a batch (or one modality's images) and
returns a new one, so training (:class:`~breastfusion.training.module.LesionClassifier`), feature extraction,
ONNX export, prediction and explanation all prepare inputs through the same code, bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from breastfusion.data.manifest import IMAGE_MODALITIES

__all__ = ["MEAN", "STD", "normalise_images", "augment_images", "augment_with_masks", "drop_modalities", "flip_images",
           "prepare_batch"]

#: Intensity normalisation of [0, 1] images: ``(x - MEAN) / STD``.
MEAN, STD = 0.5, 0.25


def normalise_images(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → the network's input scale (``(x - MEAN) / STD``)."""
    return (x - MEAN) / STD


def augment_images(x: torch.Tensor, *, modality: str) -> torch.Tensor:
    """Random flips, a small affine (rotation ±10°, scale ±10%, shift ±8%), gain, and speckle for ultrasound.

    Args:
        x: images (B, V, C, H, W) in [0, 1].
        modality: ``mammography`` also flips top-bottom; ``ultrasound`` does not (posterior
            shadowing points away from the probe) but gets multiplicative speckle noise.
    """
    return augment_with_masks(x, None, modality=modality)[0]


def augment_with_masks(x: torch.Tensor, masks: torch.Tensor | None, *, modality: str
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
    angle = (rand(n) - 0.5) * (2 * math.pi / 18)
    scale = 1 + (rand(n) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = (rand(n, 2) - 0.5) * 0.16
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


def prepare_batch(batch: dict[str, torch.Tensor], *, augment: bool = False, modality_dropout: float = 0.0,
                  modalities: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """uint8 images → normalised floats (no augmentation by default: what evaluation, prediction, explanation
    and export feed the network); for a training batch, augmentation and modality dropout as asked.

    Args:
        batch: a modality-keyed batch (not changed; a new dict is returned).
        augment: :func:`augment_images` each image modality (between scaling to [0, 1] and normalising); lesion
            masks (``{modality}_mask``, uint8) become [0, 1] floats and move with their images.
        modality_dropout: :func:`drop_modalities`' chance to hide each present modality of a sample.
        modalities: the network's modalities, which modality dropout may hide (needed when it is > 0).
    """
    batch = dict(batch)
    for modality in IMAGE_MODALITIES:
        if modality not in batch:
            continue
        x = batch[modality].float().div_(255.0)  # (B, V, 1, H, W)
        masks = batch[f"{modality}_mask"].float().div_(255.0) if f"{modality}_mask" in batch else None
        if augment:
            x, masks = augment_with_masks(x, masks, modality=modality)
        batch[modality] = normalise_images(x)
        if masks is not None:
            batch[f"{modality}_mask"] = masks
    if modality_dropout > 0:
        batch = drop_modalities(batch, modalities, modality_dropout)
    return batch

"""The LightningModule: batch preparation, augmentation, modality dropout, loss, optimiser and prediction."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from breastfusion.data.manifest import IMAGE_MODALITIES

__all__ = ["LesionClassifier", "augment_images", "drop_modalities", "flip_images", "tta_logits", "TTA_MODES"]

#: Test-time augmentation: ``none``, or ``hflip`` (the logits of each image and its left-right mirror averaged).
TTA_MODES = ("none", "hflip")

_MEAN, _STD = 0.5, 0.25  # intensity normalisation of [0, 1] images


def augment_images(x: torch.Tensor, *, modality: str) -> torch.Tensor:
    """Random flips, a small affine (rotation ±10°, scale ±10%, shift ±8%), gain, and speckle for ultrasound.

    Args:
        x: images (B, V, C, H, W) in [0, 1].
        modality: ``mammography`` also flips top-bottom; ``ultrasound`` does not (posterior
            shadowing points away from the probe) but gets multiplicative speckle noise.
    """
    b, v = x.shape[:2]
    flat = x.reshape(b * v, *x.shape[2:])
    n = flat.shape[0]

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=x.device)

    flat = torch.where(rand(n, 1, 1, 1) < 0.5, flat.flip(-1), flat)
    if modality == "mammography":
        flat = torch.where(rand(n, 1, 1, 1) < 0.5, flat.flip(-2), flat)
    angle = (rand(n) - 0.5) * (2 * math.pi / 18)
    scale = 1 + (rand(n) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = (rand(n, 2) - 0.5) * 0.16
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    flat = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    flat = flat * (1 + 0.1 * torch.randn(n, 1, 1, 1, device=x.device))
    if modality == "ultrasound":
        flat = flat * (1 + 0.1 * torch.randn_like(flat)).clamp(min=0)
    return flat.reshape(x.shape)


def flip_images(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with every image modality mirrored left-right (the other keys untouched)."""
    return {k: (v.flip(-1) if k in IMAGE_MODALITIES else v) for k, v in batch.items()}


def _check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"tta should be one of {list(TTA_MODES)}, got {tta!r}")


def tta_logits(net: nn.Module, batch: dict[str, torch.Tensor], tta: str = "none") -> torch.Tensor:
    """The network's logits on a prepared batch, averaged over test-time flips.

    ``hflip`` averages the logits of the images and of their mirror images: a lesion seen from the
    other side is the same lesion (in ultrasound and mammography alike), and the average is a
    cheap ensemble of two views that lowers the variance of a network trained on a few hundred
    images (measured in ``bench/real_data.py``).

    Raises:
        ValueError: an unknown ``tta`` (the message lists :data:`TTA_MODES`).
    """
    _check_tta(tta)
    logits = net(batch)
    if tta == "hflip" and any(k in batch for k in IMAGE_MODALITIES):
        logits = (logits + net(flip_images(batch))) / 2
    return logits


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


class LesionClassifier(L.LightningModule):
    """Trains a :class:`~breastfusion.models.network.MultimodalNet` with BCE, AdamW and a cosine schedule.

    All training randomness (augmentation, modality dropout, dropout layers) is
    reseeded from (seed, epoch, batch) before each batch, so a run resumed from
    a checkpoint continues exactly as an uninterrupted one.

    Args:
        net: the network.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        epochs: schedule length.
        augment: per-modality augmentation on training batches.
        pos_weight: weight of the malignant class in the loss (1 = none).
        modality_dropout: chance to hide each present modality of a training sample.
        seed: base seed of the per-batch randomness.
        warmup_epochs: epochs of linear warm-up (from lr / 10) before the cosine decay.
        tta: test-time augmentation of validation and prediction (:data:`TTA_MODES`).
    """

    def __init__(self, net: nn.Module, *, lr: float, weight_decay: float, epochs: int, augment: bool = True,
                 pos_weight: float = 1.0, modality_dropout: float = 0.0, seed: int = 0, warmup_epochs: int = 0,
                 tta: str = "none"):
        super().__init__()
        _check_tta(tta)
        self.warmup_epochs, self.tta = warmup_epochs, tta
        self.net = net
        self.lr, self.weight_decay, self.epochs, self.augment = lr, weight_decay, epochs, augment
        self.modality_dropout, self.seed = modality_dropout, seed
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))

    def _prepare(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        """uint8 images → normalised floats; on training batches, augmentation and modality dropout."""
        batch = dict(batch)
        for modality in IMAGE_MODALITIES:
            if modality not in batch:
                continue
            x = batch[modality].float().div_(255.0)  # (B, V, 1, H, W)
            if train and self.augment:
                x = augment_images(x, modality=modality)
            batch[modality] = (x - _MEAN) / _STD
        if train and self.modality_dropout > 0:
            batch = drop_modalities(batch, tuple(self.net.branches), self.modality_dropout)
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return tta_logits(self.net, self._prepare(batch, train=False), self.tta)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        torch.manual_seed(hash((self.seed, self.current_epoch, batch_idx)) % (2**63))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.net(self._prepare(batch, train=True))
        loss = self.loss(logits.float(), batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.loss(self(batch).float(), batch["label"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch).float())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler
        warmup = min(self.warmup_epochs, self.epochs - 1)
        scheduler = sched.CosineAnnealingLR(optimizer, T_max=self.epochs - warmup)
        if warmup > 0:
            scheduler = sched.SequentialLR(optimizer, [sched.LinearLR(optimizer, 0.1, 1.0, total_iters=warmup),
                                                       scheduler], milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

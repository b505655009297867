"""The LightningModule: loss, optimiser, schedule, per-batch seeding and test-time augmentation.

Batch preparation (normalisation, augmentation, modality dropout) is :mod:`breastfusion.data.transforms`'s.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from breastfusion.data.manifest import IMAGE_MODALITIES
from breastfusion.data.transforms import AffineRanges, flip_images, mix_batch, prepare_batch

__all__ = ["LesionClassifier", "mask_loss", "tta_logits", "TTA_MODES"]

#: Test-time augmentation: ``none``, or ``hflip`` (the logits of each image and its left-right mirror averaged).
TTA_MODES = ("none", "hflip")


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


def mask_loss(mask_logits: torch.Tensor, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
    """Binary cross-entropy of a branch's mask logits (B, V, h, w) against the batch's lesion masks.

    Each target cell is the share of its pixels inside the lesion (the [0, 1] mask of
    :func:`~breastfusion.data.transforms.prepare_batch`, area-averaged onto the feature map's grid); only view
    slots that hold an image and a mask count (modality dropout and missing masks add nothing).
    """
    masks = batch[f"{modality}_mask"]  # (B, V, 1, H, W) in [0, 1]
    b, v = masks.shape[:2]
    keep = (batch[f"{modality}_views"] & batch[f"{modality}_mask_views"]).reshape(-1)
    if not bool(keep.any()):
        return mask_logits.sum() * 0.0
    targets = F.adaptive_avg_pool2d(masks.reshape(b * v, *masks.shape[2:]).float(), mask_logits.shape[-2:])
    logits = mask_logits.reshape(b * v, *mask_logits.shape[-2:]).float()
    return F.binary_cross_entropy_with_logits(logits[keep], targets[:, 0][keep])


class LesionClassifier(L.LightningModule):
    """Trains a :class:`~breastfusion.models.network.MultimodalNet` with BCE, AdamW and a cosine schedule.

    A branch with a mask head (``model.{modality}.mask_loss`` > 0) adds its weight times :func:`mask_loss` on the
    training batches that carry lesion masks; validation, prediction and export read the classification logit only.

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
        ranges: how far the augmentation's affine warp may go.
        mixup: Beta concentration of mixup on training batches (:func:`~breastfusion.data.transforms.mix_batch`);
            0: off.
    """

    def __init__(self, net: nn.Module, *, lr: float, weight_decay: float, epochs: int, augment: bool = True,
                 pos_weight: float = 1.0, modality_dropout: float = 0.0, seed: int = 0, warmup_epochs: int = 0,
                 tta: str = "none", ranges: AffineRanges = AffineRanges(), mixup: float = 0.0):
        super().__init__()
        _check_tta(tta)
        self.ranges, self.mixup = ranges, mixup
        self.warmup_epochs, self.tta = warmup_epochs, tta
        self.net = net
        self.lr, self.weight_decay, self.epochs, self.augment = lr, weight_decay, epochs, augment
        self.modality_dropout, self.seed = modality_dropout, seed
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))

    def _prepare(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        """uint8 images → normalised floats; on training batches, augmentation and modality dropout
        (:func:`~breastfusion.data.transforms.prepare_batch`)."""
        if not train:
            return prepare_batch(batch)
        dropout = self.modality_dropout
        return prepare_batch(batch, augment=self.augment, modality_dropout=dropout,
                             modalities=tuple(self.net.branches) if dropout > 0 else (), ranges=self.ranges)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return tta_logits(self.net, self._prepare(batch, train=False), self.tta)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        torch.manual_seed(hash((self.seed, self.current_epoch, batch_idx)) % (2**63))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        prepared = self._prepare(batch, train=True)
        targets = batch["label"]
        if self.mixup > 0:
            prepared, targets = mix_batch(prepared, targets, self.mixup)
        supervised = [m for m, branch in self.net.branches.items()
                      if getattr(branch, "mask_head", None) is not None and f"{m}_mask" in prepared] \
            if hasattr(self.net, "branches") else []
        if not supervised:
            logits = self.net(prepared)
            loss = self.loss(logits.float(), targets)
        else:
            logits, mask_logits = self.net.forward_with_mask_logits(prepared)
            loss = self.loss(logits.float(), targets)
            for m in supervised:
                if m in mask_logits:
                    loss = loss + self.net.branches[m].mask_loss * mask_loss(mask_logits[m], prepared, m)
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

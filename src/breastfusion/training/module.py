"""The LightningModule: batch preparation, augmentation, loss, optimiser and prediction."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from breastfusion.data.manifest import IMAGE_MODALITIES

__all__ = ["LesionClassifier"]

_MEAN, _STD = 0.5, 0.25  # intensity normalisation of [0, 1] images


def _augment(x: torch.Tensor, *, vertical_flip: bool) -> torch.Tensor:
    """Random flips, a small affine (rotation ±10°, scale ±10%, shift ±8%) and gain, per image.

    Args:
        x: images (B, V, C, H, W) in [0, 1].
        vertical_flip: also flip top-bottom (fine for mammograms; not for ultrasound,
            where posterior shadowing points away from the probe).
    """
    b, v = x.shape[:2]
    flat = x.reshape(b * v, *x.shape[2:])
    n = flat.shape[0]
    rand = lambda *shape: torch.rand(*shape, device=x.device)  # noqa: E731
    flat = torch.where(rand(n, 1, 1, 1) < 0.5, flat.flip(-1), flat)
    if vertical_flip:
        flat = torch.where(rand(n, 1, 1, 1) < 0.5, flat.flip(-2), flat)
    angle = (rand(n) - 0.5) * (2 * math.pi / 18)
    scale = 1 + (rand(n) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = (rand(n, 2) - 0.5) * 0.16
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    flat = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    flat = flat * (1 + 0.1 * torch.randn(n, 1, 1, 1, device=x.device))
    return flat.reshape(x.shape)


class LesionClassifier(L.LightningModule):
    """Trains a :class:`~breastfusion.models.network.MultimodalNet` with BCE, AdamW and a cosine schedule.

    Args:
        net: the network.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        epochs: schedule length.
        augment: random flips and intensity jitter on training batches.
    """

    def __init__(self, net: nn.Module, *, lr: float, weight_decay: float, epochs: int, augment: bool = True):
        super().__init__()
        self.net = net
        self.lr, self.weight_decay, self.epochs, self.augment = lr, weight_decay, epochs, augment
        self.loss = nn.BCEWithLogitsLoss()

    def _prepare(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        """uint8 images → normalised floats; on training batches, random flips and gain."""
        batch = dict(batch)
        for modality in IMAGE_MODALITIES:
            if modality not in batch:
                continue
            x = batch[modality].float().div_(255.0)  # (B, V, 1, H, W)
            if train and self.augment:
                x = _augment(x, vertical_flip=modality == "mammography")
            batch[modality] = (x - _MEAN) / _STD
        return batch

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(self._prepare(batch, train=False))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.net(self._prepare(batch, train=True))
        loss = self.loss(logits, batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(logits))
        return loss

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch).float())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

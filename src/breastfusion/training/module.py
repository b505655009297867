"""The LightningModule: batch preparation, augmentation, loss, optimiser and prediction."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from breastfusion.data.manifest import IMAGE_MODALITIES

__all__ = ["LesionClassifier"]

_MEAN, _STD = 0.5, 0.25  # intensity normalisation of [0, 1] images


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
                flip = torch.rand(x.shape[0], 1, 1, 1, 1, device=x.device) < 0.5
                x = torch.where(flip, x.flip(-1), x)
                gain = 1 + 0.1 * torch.randn(x.shape[0], 1, 1, 1, 1, device=x.device)
                x = x * gain
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

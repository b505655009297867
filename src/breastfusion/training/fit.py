"""Train one network on one fold and predict its held-out lesions (a thin layer over Lightning)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from breastfusion.config import TrainingConfig
from breastfusion.data.tensors import LesionDataset
from breastfusion.training.module import LesionClassifier

__all__ = ["fit_predict", "select_device"]

for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def select_device(accelerator: str) -> tuple[str, str]:
    """(accelerator, precision) for Lightning: a GPU with bf16/fp16 mixed precision when there is one."""
    use_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if not use_gpu:
        return "cpu", "32-true"
    return "gpu", "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


class _EpochCallback(L.Callback):
    def __init__(self, on_epoch: Callable[[], None]):
        self.on_epoch = on_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.on_epoch()


def fit_predict(
    net: torch.nn.Module,
    train: LesionDataset,
    test: LesionDataset,
    config: TrainingConfig,
    *,
    seed: int,
    on_epoch: Callable[[], None] | None = None,
) -> np.ndarray:
    """Train ``net`` on ``train`` for ``config.epochs`` epochs, then return P(malignant) for ``test``.

    Args:
        net: the network to train (modified in place).
        train: training lesions.
        test: held-out lesions.
        config: optimiser and schedule settings.
        seed: seeds weights-independent randomness (shuffling, augmentation, dropout).
        on_epoch: called after every training epoch (progress).

    Returns:
        float array (len(test),).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    L.seed_everything(seed, workers=True, verbose=False)
    accelerator, precision = select_device(config.accelerator)
    module = LesionClassifier(net, lr=config.lr, weight_decay=config.weight_decay, epochs=config.epochs,
                              augment=config.augment)
    generator = torch.Generator().manual_seed(seed)
    # drop_last keeps BatchNorm away from a final batch of one sample.
    train_loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=generator,
                              drop_last=len(train) > config.batch_size)
    test_loader = DataLoader(test, batch_size=max(config.batch_size, 64), shuffle=False)
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator=accelerator, devices=1, precision=precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        deterministic=True, num_sanity_val_steps=0,
        callbacks=[_EpochCallback(on_epoch)] if on_epoch else [],
    )
    trainer.fit(module, train_loader)
    batches = trainer.predict(module, test_loader)
    return torch.cat(batches).cpu().numpy().astype(float)

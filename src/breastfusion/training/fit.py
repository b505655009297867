"""Train one network on one fold and predict its held-out lesions (a thin layer over Lightning)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, WeightAveraging
from torch.utils.data import DataLoader

from breastfusion.config import TrainingConfig
from breastfusion.data.tensors import LesionDataset
from breastfusion.data.transforms import AffineRanges, prepare_batch
from breastfusion.training.module import LesionClassifier
from breastfusion.training.sampling import EpochSampler

__all__ = ["EpochEnd", "WeightEMA", "channels_last", "fit_predict", "predict_probs", "extract_features",
           "select_device", "clear_work_dir"]

for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


def select_device(accelerator: str) -> tuple[str, str]:
    """(accelerator, precision) for Lightning: a GPU with bf16/fp16 mixed precision when there is one (checked by
    running autocast on it: :func:`breastfusion.training.device.checked_precision`)."""
    use_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if not use_gpu:
        return "cpu", "32-true"
    from breastfusion.training.device import checked_precision

    return "gpu", checked_precision("gpu", "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")


@dataclass(frozen=True)
class EpochEnd:
    """What a finished training epoch reports to progress (``on_epoch``), so a run shows it is learning.

    Attributes:
        epoch: the epoch just finished, from 1.
        epochs: the most epochs this network trains for (``training.epochs``; early stopping may end sooner).
        train_loss: the epoch's mean training loss (per sample, as Lightning averages the logged
            ``train_loss`` over batches weighted by batch size); ``None`` when the epoch was not run here
            (a network loaded from a finished checkpoint).
    """

    epoch: int
    epochs: int
    train_loss: float | None = None


def _takes_an_argument(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` can be called with one positional argument (else it is an older zero-argument hook)."""
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): assume the current protocol
        return True
    return True


class _EpochCallback(L.Callback):
    """Calls ``on_epoch`` after every training epoch with an :class:`EpochEnd` (or with nothing, for a
    zero-argument callable, as before the loss was reported)."""

    def __init__(self, on_epoch: Callable[[EpochEnd], None] | Callable[[], None]):
        self.on_epoch = on_epoch
        self.with_end = _takes_an_argument(on_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.with_end:
            self.on_epoch()  # type: ignore[call-arg]
            return
        loss = trainer.callback_metrics.get("train_loss")  # the epoch's aggregate: reduced before this hook
        self.on_epoch(EpochEnd(trainer.current_epoch + 1, trainer.max_epochs,  # type: ignore[call-arg]
                               float(loss) if loss is not None else None))


class _SaveLast(L.Callback):
    """Save a full training checkpoint (weights, optimiser, schedule, epoch) after every epoch."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)


class WeightEMA(WeightAveraging):
    """An exponential moving average of the weights (and BatchNorm buffers), updated after every training step,
    that validation, early stopping, checkpoints and the final network use (Lightning's
    :class:`~lightning.pytorch.callbacks.WeightAveraging`, which also saves and resumes the average).

    Args:
        epochs: the average's time constant in epochs (``training.ema_epochs``).
        steps_per_epoch: optimiser steps in an epoch, so the decay per step is ``exp(-1 / (epochs * steps))``: the
            same memory in epochs whatever the cohort's size.
    """

    def __init__(self, epochs: float, steps_per_epoch: int):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.decay = float(np.exp(-1.0 / (epochs * max(steps_per_epoch, 1))))
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(self.decay))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None


def fit_predict(
    net: torch.nn.Module,
    train: LesionDataset,
    test: LesionDataset | None,
    config: TrainingConfig,
    *,
    seed: int,
    val: LesionDataset | None = None,
    work_dir: Path | None = None,
    on_epoch: Callable[[EpochEnd], None] | Callable[[], None] | None = None,
) -> np.ndarray:
    """Train ``net`` on ``train``, then return P(malignant) for ``test`` (``None``: train only, return an empty array).

    Without ``val`` it trains for ``config.epochs``; with ``val`` it stops early
    on the validation loss (patience ``config.patience``) and predicts with the
    best epoch's weights. With ``config.ema_epochs`` those weights are a moving average (:class:`WeightEMA`).
    With ``work_dir`` it saves a checkpoint after every epoch and, if one is already there (an interrupted run),
    resumes from it.

    Args:
        net: the network to train (modified in place: it ends with the weights used to predict).
        train: training lesions.
        test: held-out lesions.
        config: optimiser, schedule, sampling and device settings.
        seed: seeds sampling, augmentation and dropout (as a function of epoch and batch).
        val: inner validation lesions from the training subjects, for early stopping.
        work_dir: folder for the in-progress checkpoint of this fold.
        on_epoch: called after every training epoch with an :class:`EpochEnd` (epoch, epochs, mean training
            loss), for progress; a zero-argument callable is still accepted and called with nothing.

    Returns:
        float array (len(test),).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    L.seed_everything(seed, workers=True, verbose=False)
    accelerator, precision = select_device(config.accelerator)
    labels = train.tensors["label"].numpy()
    pos_weight = (labels == 0).sum() / max((labels == 1).sum(), 1) if config.class_weights else 1.0
    module = LesionClassifier(net, lr=config.lr, weight_decay=config.weight_decay, epochs=config.epochs,
                              augment=config.augment, pos_weight=pos_weight,
                              modality_dropout=config.modality_dropout, seed=seed,
                              warmup_epochs=config.warmup_epochs, tta=config.tta, mixup=config.mixup,
                              ranges=AffineRanges(config.augment_zoom, config.augment_rotation, config.augment_shift))
    sampler = EpochSampler(labels, seed=seed, balanced=config.sampler == "balanced")
    from breastfusion.training.device import loader_options

    loading = loader_options(config.num_workers, accelerator)  # speed only: batches and their order are unchanged
    # drop_last keeps BatchNorm away from a final batch of one sample.
    train_loader = DataLoader(train, batch_size=config.batch_size, sampler=sampler,
                              drop_last=len(train) > config.batch_size, **loading)
    eval_batch = max(config.batch_size, 64)
    val_loader = DataLoader(val, batch_size=eval_batch, **loading) if val is not None else None
    with tempfile.TemporaryDirectory(prefix="breastfusion-fold-") as scratch:
        root = work_dir if work_dir is not None else Path(scratch)
        callbacks: list[L.Callback] = [_EpochCallback(on_epoch)] if on_epoch else []
        best = None
        if val is not None:
            best = ModelCheckpoint(dirpath=root, filename="best", monitor="val_loss", save_top_k=1,
                                   enable_version_counter=False)
            callbacks += [EarlyStopping(monitor="val_loss", patience=config.patience), best]
        if config.ema_epochs > 0:
            callbacks.append(WeightEMA(config.ema_epochs, len(train_loader)))
        if work_dir is not None:
            callbacks.append(_SaveLast(root / "last.ckpt"))
        trainer = L.Trainer(
            max_epochs=config.epochs, accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
            strategy=config.strategy, precision=precision, logger=False, enable_checkpointing=best is not None,
            enable_progress_bar=False, enable_model_summary=False, deterministic=True,
            num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=str(root),
        )
        resume = root / "last.ckpt" if (root / "last.ckpt").is_file() else None
        with warnings.catch_warnings(), channels_last(net):
            warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
            trainer.fit(module, train_loader, val_loader, ckpt_path=resume)
        if best is not None and best.best_model_path:
            state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        if test is None:
            return np.empty(0)
        batches = trainer.predict(module, DataLoader(test, batch_size=eval_batch, **loading))
    return torch.cat(batches).cpu().numpy().astype(float)


@contextmanager
def channels_last(net: torch.nn.Module) -> Iterator[None]:
    """Hold ``net``'s 4-D weights in channels-last memory while training, and give them back contiguous.

    oneDNN's and cuDNN's convolutions run faster on channels-last tensors (training steps on this project's CPU,
    1 thread, median of 3 rounds: EfficientNet-Lite0 x1.53 at 128 px and x1.63 at 224 px, Lite2 x1.37,
    ``resnet18_half`` x1.25; ``bench/channels_last.py``, ``bench/results/channels_last.json``).
    The values are the same; only their layout changes, so what the network predicts after training (and what a
    bundle, ONNX or a reloaded run predicts from the saved weights) is computed on the usual layout.
    """
    net.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        net.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict_probs(net: torch.nn.Module, dataset: LesionDataset, *, batch_size: int = 64,
                  tta: str = "none") -> np.ndarray:
    """P(malignant) of every sample of ``dataset`` with ``net`` in eval mode (no training randomness), with the
    test-time augmentation ``tta`` (:data:`~breastfusion.training.module.TTA_MODES`)."""
    module = LesionClassifier(net, lr=1.0, weight_decay=0.0, epochs=1, tta=tta).eval()
    device = next(net.parameters()).device
    out = [torch.sigmoid(module({k: v.to(device) for k, v in batch.items()}).float()).cpu()
           for batch in DataLoader(dataset, batch_size=batch_size)]
    return torch.cat(out).numpy().astype(float)


@torch.no_grad()
def extract_features(net: torch.nn.Module, dataset: LesionDataset, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Deep features of every sample (``MultimodalNet.features``: ``fused`` and one block per branch), in eval
    mode, from the same prepared inputs as :func:`predict_probs`."""
    net.eval()
    device = next(net.parameters()).device
    blocks: dict[str, list[np.ndarray]] = {}
    for batch in DataLoader(dataset, batch_size=batch_size):
        prepared = prepare_batch({k: v.to(device) for k, v in batch.items()})
        for name, value in net.features(prepared).items():
            blocks.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in blocks.items()}


def clear_work_dir(work_dir: Path) -> None:
    """Remove a fold's in-progress checkpoints once its results are saved."""
    shutil.rmtree(work_dir, ignore_errors=True)

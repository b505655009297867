"""Lesion localiser: a small U-Net that finds the lesion in a whole ultrasound frame, so the classifier can crop to it.

Cropping each image to its marked lesion lifts a from-scratch classifier far above the whole frame
(BUSI 0.921 vs 0.844, bench/results/real_data.json), but needs a reader's mask at prediction. The
localiser learns the masks of the *training* images instead: in cross-validation it is fitted on each
fold's training lesions only, and its box for a held-out image replaces the reader's mask there
(``model.{modality}.preprocess.roi: predicted``). The network is segmentation_models_pytorch's U-Net on a
timm encoder, from scratch (no weights are downloaded); it sees the whole frame, prepared as the
classifier's whole-frame input (scan-area crop, percentile normalisation, aspect kept, padded) at a
small size, because a box needs no fine detail.

The box is the bounding box of the connected region of the probability map above ``threshold`` that holds
the most probability mass (one lesion per image, as in BUSI and BrEaST-Lesions); where nothing reaches the
threshold, the region above half the map's maximum is used, so every image gets a box.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from breastfusion.config import LocaliserConfig

__all__ = ["build_localiser", "fit_localiser", "predict_lesion_probs", "box_from_probs",
           "frame_box_to_image", "box_iou"]

Box = tuple[int, int, int, int]  # (top, left, bottom, right), bottom/right exclusive


def build_localiser(settings: LocaliserConfig) -> nn.Module:
    """An untrained one-channel-in, one-logit-out U-Net (random initialisation: nothing is downloaded)."""
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=f"tu-{settings.encoder}", encoder_weights=None, in_channels=1, classes=1,
                    decoder_channels=tuple(settings.decoder_channels))


def _as_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) prepared frames -> float (N, 1, S, S) centred on the [0, 1] image's mid grey."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None] / 255.0
    return (x - 0.5) / 0.25


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_localiser(images: np.ndarray, masks: np.ndarray, settings: LocaliserConfig, *, seed: int,
                  on_epoch=None) -> nn.Module:
    """Train a localiser on prepared frames and their aligned lesion masks (AdamW, one-cycle schedule, binary
    cross-entropy + Dice loss, left-right flips, a small gain jitter and, with ``augment: affine``, a random zoom,
    rotation and shift of frame and mask together).

    Args:
        images: uint8 (N, S, S) whole frames at ``settings.image_size``.
        masks: uint8 (N, S, S), the share of each pixel inside the lesion x 255 (``load_lesion_mask``).
        seed: seeds initialisation, batch order and flips (the same seed gives the same network on a CPU).
        on_epoch: called with (epoch, epochs, mean loss) after each epoch (progress).

    Raises:
        ValueError: shapes differ, or fewer than two images.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.shape != masks.shape or images.ndim != 3:
        raise ValueError(f"localiser images {images.shape} and masks {masks.shape} should both be (N, S, S)")
    if len(images) < 2:
        raise ValueError(f"a localiser needs at least 2 training images with masks, got {len(images)}")
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    device = _device()
    model = build_localiser(settings).to(device).to(memory_format=torch.channels_last)
    x_all = _as_input(images)
    y_all = torch.as_tensor(masks, dtype=torch.float32)[:, None] / 255.0
    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # the batches that train: every full batch, and a last partial one of two or more (one breaks batch norm)
    per_epoch = len(images) // settings.batch_size + (len(images) % settings.batch_size >= 2)
    steps = settings.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=settings.lr, total_steps=steps,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(settings.epochs):
        model.train()
        losses = []
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(settings.batch_size):
            if len(batch) < 2:  # a batch of one breaks batch norm
                continue
            x, y = x_all[batch], y_all[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None, None], y.flip(-1), y)
            if settings.augment == "affine":
                x, y = _random_affine(x, y, generator)
            gain = 1 + 0.2 * (torch.rand(len(batch), 1, 1, 1, generator=generator) - 0.5)
            x = (x * gain).to(device).contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            logits = model(x)
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice(logits, y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        if on_epoch is not None:
            on_epoch(epoch + 1, settings.epochs, float(np.mean(losses)) if losses else float("nan"))
    return model.eval().cpu()


def _random_affine(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random zoom (0.85-1.15), rotation (+-10 degrees) and shift (+-10%) of each frame and its mask;
    the frame's new border is the background's value (its minimum), the mask's is empty."""
    n = len(x)
    u = torch.rand(n, 4, generator=generator)
    scale, angle = 0.85 + 0.3 * u[:, 0], (u[:, 1] - 0.5) * (20 * np.pi / 180)
    shift = (u[:, 2:] - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    moved = F.grid_sample(x - low, grid, align_corners=False, padding_mode="zeros") + low
    return moved, F.grid_sample(y, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def predict_lesion_probs(model: nn.Module, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Per-pixel lesion probability of prepared frames, averaged with the left-right mirror.

    Returns:
        float32 (N, S, S) in [0, 1].
    """
    model = model.eval()
    device = next(model.parameters()).device
    out = []
    for x in _as_input(images).split(batch_size):
        x = x.to(device)
        logits = (model(x) + model(x.flip(-1)).flip(-1)) / 2
        out.append(torch.sigmoid(logits)[:, 0].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,) + np.asarray(images).shape[1:], np.float32)


def box_from_probs(prob: np.ndarray, threshold: float = 0.5) -> Box:
    """The lesion box in the probability map's own pixels: the connected region above ``threshold`` holding the
    most probability mass (above half the maximum when nothing reaches ``threshold``).

    Raises:
        ValueError: the map is not 2-D or is all zeros.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"a probability map should be (H, W), got shape {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("the lesion probability map has NaN or infinite values")
    peak = float(prob.max())
    if peak <= 0:
        raise ValueError("the lesion probability map is zero everywhere; there is no region to box")
    above = prob >= (threshold if peak >= threshold else peak / 2)
    labels, n = ndimage.label(above)
    mass = ndimage.sum(prob, labels, index=np.arange(1, n + 1))
    rows, cols = np.nonzero(labels == int(np.argmax(mass)) + 1)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def frame_box_to_image(box: Box, crop: Box, size: int) -> Box:
    """A box on a prepared frame (``size`` x ``size``, the image's ``crop`` resized with its aspect kept and
    centred, as :func:`breastfusion.data.preprocess.resize_pad` does) -> the same box on the original image."""
    c_top, c_left, c_bottom, c_right = crop
    h, w = c_bottom - c_top, c_right - c_left
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pad_top, pad_left = (size - nh) // 2, (size - nw) // 2
    top, left, bottom, right = box

    def back(v: float, pad: int, start: int, extent: int) -> int:
        return int(min(max(round(start + (v - pad) / scale), start), start + extent))

    out = (back(top, pad_top, c_top, h), back(left, pad_left, c_left, w),
           back(bottom, pad_top, c_top, h), back(right, pad_left, c_left, w))
    if out[2] <= out[0] or out[3] <= out[1]:  # the box fell in the padding: keep one pixel inside the scan
        t, lft = min(out[0], c_bottom - 1), min(out[1], c_right - 1)
        out = (t, lft, max(out[2], t + 1), max(out[3], lft + 1))
    return out


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (top, left, bottom, right) boxes."""
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bottom - top) * max(0, right - left)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0

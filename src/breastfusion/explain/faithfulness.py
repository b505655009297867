"""Is a heatmap looking at the lesion, and does the model need what it shows?

Two families of checks:

* against a lesion mask (known from the synthetic generator, drawn by a
  radiologist on BUSI / BrEaST): the **energy in mask**, the share of the
  heatmap's total mass inside the lesion (1 for a heatmap that is the mask,
  the mask's area fraction for a uniform one), and the **pointing game**
  (Zhang et al., ECCV 2016): a hit when the heatmap's maximum falls inside the
  lesion, within a tolerance of 15 px at 224 px scaled to the image;
* against the model (no mask needed): **deletion** and **insertion** curves
  (Petsiuk et al., RISE, BMVC 2018): remove (or reveal) pixels from the most
  to the least salient and follow P(class); a faithful map makes deletion fall
  fast (low area) and insertion rise fast (high area).

Each is compared with a random heatmap (smoothed uniform noise), the level a
map that knows nothing would reach.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import binary_dilation, gaussian_filter

__all__ = ["energy_in_mask", "pointing_game", "pointing_tolerance", "random_heatmap", "deletion_insertion"]


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap, mask = np.asarray(heatmap, dtype=np.float64), np.asarray(mask, dtype=bool)
    if heatmap.shape != mask.shape or heatmap.ndim != 2:
        raise ValueError(f"heatmap and mask should be 2-d of one shape, got {heatmap.shape} and {mask.shape}")
    if (heatmap < 0).any():
        raise ValueError("heatmap should be non-negative")
    return heatmap, mask


def energy_in_mask(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's mass inside the mask, in [0, 1]; NaN for an all-zero heatmap or empty mask.

    Args:
        heatmap: float (H, W), non-negative.
        mask: bool (H, W), the lesion.
    """
    heatmap, mask = _check(heatmap, mask)
    total = heatmap.sum()
    if total <= 0 or not mask.any():
        return float("nan")
    return float(heatmap[mask].sum() / total)


def pointing_tolerance(side: int) -> int:
    """The pointing game's tolerance in pixels: 15 px at 224 px, scaled to ``side``."""
    return int(round(15 * side / 224))


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, *, tolerance: int | None = None) -> float:
    """1.0 when the heatmap's maximum lies within ``tolerance`` px of the mask, else 0.0 (NaN for an empty mask).

    Ties (a flat heatmap) count as a hit only when every maximum is a hit, so a
    map that points nowhere scores as a miss.

    Args:
        heatmap: float (H, W), non-negative.
        mask: bool (H, W).
        tolerance: pixels; default :func:`pointing_tolerance` of the width.
    """
    heatmap, mask = _check(heatmap, mask)
    if not mask.any():
        return float("nan")
    tolerance = pointing_tolerance(mask.shape[1]) if tolerance is None else tolerance
    if tolerance > 0:
        yy, xx = np.mgrid[-tolerance:tolerance + 1, -tolerance:tolerance + 1]
        mask = binary_dilation(mask, structure=yy ** 2 + xx ** 2 <= tolerance ** 2)
    peaks = heatmap >= heatmap.max()
    return float(mask[peaks].all())


def random_heatmap(shape: tuple[int, int], rng: np.random.Generator, *, smooth: float = 0.08) -> np.ndarray:
    """A heatmap that knows nothing: uniform noise smoothed to blobs of CAM-like size, scaled to [0, 1].

    Args:
        shape: (H, W).
        rng: random generator.
        smooth: Gaussian sigma as a fraction of the width (0: unsmoothed noise).
    """
    noise = rng.random(shape)
    if smooth > 0:
        noise = gaussian_filter(noise, smooth * shape[1], mode="wrap")
    noise = noise - noise.min()
    return (noise / max(noise.max(), 1e-12)).astype(np.float32)


def centre_heatmap(shape: tuple[int, int]) -> np.ndarray:
    """A heatmap that only knows where lesions usually are: an isotropic Gaussian at the image centre,
    sigma a quarter of the width. Lesions are often centred in the frame, so a CAM is worth showing
    only where it beats this prior as well as random."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    yy -= (h - 1) / 2
    xx -= (w - 1) / 2
    return np.exp(-(xx ** 2 + yy ** 2) / (2 * (w / 4) ** 2)).astype(np.float32)


def deletion_insertion(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    heatmap: np.ndarray,
    *,
    steps: int = 16,
    baseline: float = 0.0,
    blur_sigma: float = 0.1,
) -> dict[str, np.ndarray | float]:
    """Deletion and insertion curves of one image, every step in one batch.

    Args:
        predict: images (N, C, H, W) → score (N,) of the explained class (e.g. a probability).
        image: (C, H, W), as the model reads it (normalised).
        heatmap: (H, W) saliency; pixels are removed / revealed from the highest.
        steps: number of steps (the curves have ``steps + 1`` points, fraction 0 to 1).
        baseline: the value deleted pixels take (0 is the mean intensity after normalisation).
        blur_sigma: insertion starts from the image blurred with this sigma (fraction of the width).

    Returns:
        ``fraction`` (steps+1,), ``deletion`` and ``insertion`` scores at each fraction, and their
        areas under the curve ``deletion_auc``, ``insertion_auc`` (trapezoid over fraction 0..1).
    """
    c, h, w = image.shape
    order = np.argsort(-np.asarray(heatmap, dtype=np.float64).ravel(), kind="stable")
    fraction = np.linspace(0, 1, steps + 1)
    counts = np.round(fraction * h * w).astype(int)
    keep = torch.zeros(steps + 1, h * w, dtype=torch.bool)  # True: pixel among the top counts[i]
    rank = torch.empty(h * w, dtype=torch.long)
    rank[torch.from_numpy(order)] = torch.arange(h * w)
    keep[:] = rank[None, :] < torch.from_numpy(counts)[:, None]
    top = keep.reshape(steps + 1, 1, h, w).to(image.dtype)
    blurred = torch.from_numpy(gaussian_filter(image.numpy(), (0, blur_sigma * w, blur_sigma * w))).to(image.dtype)
    deleted = image[None] * (1 - top) + baseline * top
    inserted = blurred[None] * (1 - top) + image[None] * top
    with torch.no_grad():
        scores = predict(torch.cat([deleted, inserted])).double().numpy()
    deletion, insertion = scores[:steps + 1], scores[steps + 1:]
    return {"fraction": fraction, "deletion": deletion, "insertion": insertion,
            "deletion_auc": float(np.trapezoid(deletion, fraction)),
            "insertion_auc": float(np.trapezoid(insertion, fraction))}

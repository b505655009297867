"""Heatmap overlays and the report's gallery: correct and misclassified cases side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image
from scipy.ndimage import binary_erosion

__all__ = ["overlay", "enlarged", "save_overlay", "select_cases", "plot_gallery"]


def overlay(image: np.ndarray, heatmap: np.ndarray, *, weight: float = 0.45,
            mask: np.ndarray | None = None) -> np.ndarray:
    """A greyscale image in [0, 1] (H, W) under a jet-coloured heatmap in [0, 1] (H, W) → uint8 RGB (H, W, 3).

    With ``mask`` (bool (H, W)), the lesion's outline is drawn in white.
    """
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    out = show_cam_on_image(rgb, np.clip(heatmap, 0, 1).astype(np.float32), use_rgb=True, image_weight=1 - weight)
    if mask is not None and mask.any():
        out[mask & ~binary_erosion(mask)] = 255
    return out


def enlarged(rgb: np.ndarray, *, min_side: int = 192) -> Image.Image:
    """An RGB uint8 image enlarged (nearest neighbour, whole-pixel factor) to at least ``min_side`` px tall."""
    scale = max(1, int(np.ceil(min_side / rgb.shape[0])))
    return Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.Resampling.NEAREST)


def save_overlay(image: np.ndarray, heatmap: np.ndarray, path: Path, *, min_side: int = 192,
                 mask: np.ndarray | None = None) -> Path:
    """Write the overlay as a PNG, enlarged (nearest neighbour) to at least ``min_side`` px so it can be read."""
    enlarged(overlay(image, heatmap, mask=mask), min_side=min_side).save(path)
    return path


def select_cases(subjects, n_cases: int, *, threshold: float = 0.5) -> dict[str, list[str]]:
    """Pick the most confident correct and misclassified subjects, benign and malignant alternating.

    Args:
        subjects: a frame with ``subject_id``, ``y`` and out-of-fold ``prob`` (one row per subject), and
            optionally ``threshold``: each subject's own decision threshold (its fold's), used instead of
            ``threshold``.
        n_cases: cases per side (correct, misclassified).
        threshold: the decision threshold on ``prob`` when the frame has no ``threshold`` column.

    Returns:
        ``{"correct": [subject ids], "misclassified": [subject ids]}``.
    """
    cut = subjects["threshold"] if "threshold" in subjects else threshold
    frame = subjects.assign(pred=(subjects["prob"] >= cut).astype(int), confidence=(subjects["prob"] - cut).abs())
    out = {}
    for side, correct in (("correct", True), ("misclassified", False)):
        part = frame[(frame["pred"] == frame["y"]) == correct].sort_values("confidence", ascending=False)
        by_label = [part[part["y"] == label]["subject_id"].tolist() for label in (1, 0)]
        picked: list[str] = []
        while len(picked) < n_cases and any(by_label):
            for queue in by_label:
                if queue and len(picked) < n_cases:
                    picked.append(queue.pop(0))
        out[side] = picked
    return out


def plot_gallery(cases: dict[str, list[dict]], path: Path, *, title: str) -> Path | None:
    """Correct cases on the left, misclassified on the right; one row per case, one panel per image.

    Args:
        cases: ``{"correct" | "misclassified": [{"label": str, "panels": [(caption, rgb uint8)]}]}``.
        path: PNG to write.
        title: figure title.

    Returns:
        ``path``, or ``None`` when there is no case to show.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = ("correct", "misclassified")
    rows = max((len(cases.get(s, [])) for s in sides), default=0)
    if rows == 0:
        return None
    width = max((len(c["panels"]) for s in sides for c in cases.get(s, [])), default=1)
    fig, axes = plt.subplots(rows, 2 * width, figsize=(2.0 * 2 * width + 0.4, 2.25 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for s, side in enumerate(sides):
        for r, case in enumerate(cases.get(side, [])):
            for p, (caption, rgb) in enumerate(case["panels"]):
                ax = axes[r, s * width + p]
                ax.imshow(rgb)
                ax.set_title(caption, fontsize=7)
            axes[r, s * width].text(-0.08, 0.5, case["label"], transform=axes[r, s * width].transAxes,
                                    rotation=90, va="center", ha="right", fontsize=7)
    for s, side in enumerate(sides):
        fig.text((s + 0.5) / 2, 0.995, side, ha="center", va="top", fontsize=11, weight="bold")
    fig.suptitle(title, y=0.965, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

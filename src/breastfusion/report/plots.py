"""Figures of a run, written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

__all__ = ["plot_roc"]


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, *,
             title: str = "Subject-level ROC (out-of-fold)", band: dict[str, Any] | None = None) -> Path:
    """Draw one ROC curve per entry and save a PNG.

    Args:
        curves: ``{label: (y, score, auc)}``; a label starting with ``oracle``
            is drawn dashed.
        path: the PNG to write.
        title: the plot title.
        band: a pointwise confidence band to shade under its variant's curve:
            ``variant``, ``fpr``, ``tpr_low``, ``tpr_high``, ``level`` (as
            :func:`breastfusion.evaluation.curves.roc_band` returns, plus ``variant``).
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    for i, (label, (y, score, auc)) in enumerate(curves.items()):
        fpr, tpr, _ = roc_curve(y, score)
        style = "--" if label.startswith("oracle") else "-"
        color = f"C{i}"
        ax.plot(fpr, tpr, style, lw=1.8, color=color, label=f"{label} (AUC {auc:.3f})")
        if band is not None and band.get("variant") == label:
            ax.fill_between(band["fpr"], band["tpr_low"], band["tpr_high"], color=color, alpha=0.18, lw=0,
                            label=f"{label}: {100 * band['level']:.0f}% bootstrap band")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)

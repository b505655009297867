"""The report's figures, drawn from the numbers in ``results.json`` (so figure and file always agree).

Each function takes the ``variants`` mapping of a results dict and writes one
PNG (matplotlib, Agg backend, no display needed):

* :func:`plot_calibration`: a reliability diagram per variant (observed
  malignancy rate per bin of predicted probability, Wilson 95% intervals);
* :func:`plot_decision_curves`: net benefit of each variant against treating
  everybody (biopsy all) and nobody;
* :func:`plot_confusion_matrices`: one 2x2 matrix per variant at each fold's
  Youden threshold (chosen on that fold's calibration subjects).

:func:`write_figures` draws them all, and the ROC figure, into a run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from breastfusion.evaluation.repeats import first_repeat  # noqa: E402
from breastfusion.experiment.run_folder import FIGURES  # noqa: E402  (the figure file names)
from breastfusion.report.plots import plot_roc  # noqa: E402

__all__ = ["FIGURES", "plot_calibration", "plot_decision_curves", "plot_confusion_matrices", "write_figures"]

#: Figure name (as the report embeds it) -> file name in the run folder.


def _grid(n: int, *, cell: float = 3.0) -> tuple[plt.Figure, np.ndarray]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.4, cell * rows + 0.5), dpi=110, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_calibration(variants: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Reliability diagram per variant from ``variants[v]["calibration_curve"]`` (with Brier and ECE).

    Points are bins of predicted probability (area ~ subjects in the bin); the
    bars are Wilson 95% intervals of the observed malignancy rate; on the
    diagonal the predicted risk equals the observed rate.
    """
    fig, axes = _grid(len(variants))
    for i, (ax, (name, v)) in enumerate(zip(axes, variants.items())):
        curve = pd.DataFrame(v["calibration_curve"])
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        if not curve.empty:
            err = np.vstack([curve["observed"] - curve["observed_low"], curve["observed_high"] - curve["observed"]])
            ax.errorbar(curve["mean_predicted"], curve["observed"], yerr=np.clip(err, 0, None), fmt="none",
                        ecolor=f"C{i}", alpha=0.6, lw=1)
            ax.scatter(curve["mean_predicted"], curve["observed"], s=12 + 2.5 * curve["n"], color=f"C{i}",
                       edgecolor="white", zorder=3)
            ax.plot(curve["mean_predicted"], curve["observed"], "-", color=f"C{i}", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted risk", title=f"{name}\nBrier {v['brier']:.3f} · "
               f"ECE {v['ece']:.3f}")
        ax.set_aspect("equal")
        if i % 4 == 0:
            ax.set_ylabel("observed malignant fraction")
        ax.title.set_fontsize(9)
    return _save(fig, path)


def plot_decision_curves(variants: dict[str, dict[str, Any]], path: str | Path, *, note: str = "") -> Path:
    """Net benefit over threshold probabilities from ``variants[v]["decision_curve"]``, with treat-all / none.

    A model is useful at threshold ``pt`` (the risk at which a clinician would
    biopsy) where its curve lies above both reference lines.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    first = next(iter(variants.values()))["decision_curve"]
    thresholds = np.asarray(first["threshold"])
    treat_all = np.asarray(first["net_benefit_treat_all"])
    ax.plot(thresholds, treat_all, color="black", lw=1.2, label="biopsy all")
    ax.axhline(0.0, color="grey", lw=1.2, ls="--", label="biopsy none")
    top = max(float(treat_all.max()), 0.05)
    for i, (name, v) in enumerate(variants.items()):
        curve = v["decision_curve"]
        ax.plot(curve["threshold"], curve["net_benefit_model"], color=f"C{i}", lw=1.8, label=name)
        top = max(top, float(np.max(curve["net_benefit_model"])))
    ax.set(xlim=(0, float(thresholds.max())), ylim=(-0.05, top * 1.1 + 0.01),
           xlabel="threshold probability (risk at which a biopsy is recommended)", ylabel="net benefit",
           title=f"Decision curves (subject level, out-of-fold){note}")
    ax.legend(fontsize=8, loc="lower left")  # the curves start high on the left and fall to the right
    ax.grid(alpha=0.25)
    return _save(fig, path)


def plot_confusion_matrices(variants: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """A 2x2 confusion matrix per variant from ``variants[v]["threshold_metrics"]`` (tp, fp, tn, fn).

    Rows are the truth, columns the call at each fold's Youden threshold; each
    cell shows the count and its share of the row (sensitivity and specificity
    on the diagonal).
    """
    fig, axes = _grid(len(variants), cell=2.7)
    for ax, (name, v) in zip(axes, variants.items()):
        t = v["threshold_metrics"]
        matrix = np.array([[t["tn"], t["fp"]], [t["fn"], t["tp"]]], dtype=float)
        share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (r, c), count in np.ndenumerate(matrix):
            ax.text(c, r, f"{int(count)}\n{100 * share[r, c]:.0f}%", ha="center", va="center", fontsize=9,
                    color="white" if share[r, c] > 0.6 else "black")
        ax.set_xticks([0, 1], ["benign", "malignant"], fontsize=8)
        ax.set_yticks([0, 1], ["benign", "malignant"], fontsize=8)
        ax.set_xlabel("called (Youden threshold per fold)", fontsize=8)
        ax.set_ylabel("truth", fontsize=8)
        ax.set_title(name, fontsize=9)
    return _save(fig, path)


#: Most variants drawn in one line plot; more are unreadable (colours repeat after ten).
MAX_LINES = 8


def shown_variants(names: list[str], reference: str | None, *, limit: int = MAX_LINES) -> list[str]:
    """The variants a line plot draws: all when few, else the reference and the first others in order
    (every variant stays in the tables)."""
    if len(names) <= limit:
        return list(names)
    keep = [reference] if reference in names else []
    keep += [n for n in names if n != reference][:limit - len(keep)]
    return [n for n in names if n in keep]


def write_figures(results: dict[str, Any], scores: dict[str, pd.DataFrame], out: str | Path, *,
                  extra_curves: dict[str, tuple[np.ndarray, np.ndarray, float]] | None = None) -> dict[str, Path]:
    """Draw every figure of the report into the run folder ``out``.

    Args:
        results: the run's results (``variants``; ``roc_band`` for the ROC band).
        scores: each variant's subject scores (``subject_id``, ``y``, ``prob``; repeat 0 is drawn).
        out: the run folder.
        extra_curves: further ROC curves ``{label: (y, score, auc)}`` (the oracle on synthetic data).

    Returns:
        ``{name: path}`` of the figures written (keys of :data:`FIGURES`).
    """
    out = Path(out)
    variants = results["variants"]
    shown = shown_variants(list(variants), results.get("reference_variant"))
    hidden = len(variants) - len(shown)
    more = f"\n({hidden} more variants in the tables)" if hidden else ""
    curves = {}
    for name in shown:
        subjects = first_repeat(scores[name])
        curves[name] = (subjects["y"].to_numpy(), subjects["prob"].to_numpy(), variants[name]["auc"])
    curves.update(extra_curves or {})
    return {
        "roc": plot_roc(curves, out / FIGURES["roc"], band=results.get("roc_band"),
                        title=f"Subject-level ROC (out-of-fold){more}"),
        "calibration": plot_calibration(variants, out / FIGURES["calibration"]),
        "decision_curves": plot_decision_curves({n: variants[n] for n in shown}, out / FIGURES["decision_curves"],
                                                note=more),
        "confusion_matrices": plot_confusion_matrices(variants, out / FIGURES["confusion_matrices"]),
    }

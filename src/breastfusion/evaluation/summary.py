"""Every number a run reports for a variant, at the subject level, with nothing tuned on a test fold.

Per fold, the operating thresholds (Youden; sensitivity ≥ 98% for rule-out) and
the conformal calibration come from that fold's calibration scores (its inner
validation subjects, or its training subjects in-sample when the run has no
validation split); they are then applied to the fold's test subjects, and the
test subjects of all folds are pooled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from breastfusion.evaluation.clinical import biopsies_avoided, decision_curve, specificity_at_sensitivity
from breastfusion.evaluation.conformal import conformal_sets, empirical_coverage, set_decisions
from breastfusion.evaluation.delong import delong_ci, delong_test
from breastfusion.evaluation.metrics import (
    auc_with_ci,
    brier_score,
    expected_calibration_error,
    sensitivity_threshold,
    subject_level,
    threshold_metrics,
    youden_threshold,
)

__all__ = ["summarise_variant", "compare_variants", "NET_BENEFIT_THRESHOLDS"]

NET_BENEFIT_THRESHOLDS = (0.02, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50)
_CONFORMAL_ALPHA = 0.10
_RULE_OUT_SENSITIVITY = 0.98


def _per_fold(test: pd.DataFrame, calibration: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply each fold's calibration-derived thresholds and conformal sets to its test subjects."""
    rows = []
    for fold, fold_test in test.groupby("fold"):
        fold_test = subject_level(fold_test).assign(fold=fold)
        calib = subject_level(calibration[calibration["fold"] == fold])
        y_cal, p_cal = calib["y"].to_numpy(), calib["prob"].to_numpy()
        fold_test["youden_threshold"] = youden_threshold(y_cal, p_cal)
        fold_test["rule_out_threshold"] = sensitivity_threshold(y_cal, p_cal, target=_RULE_OUT_SENSITIVITY)
        sets = conformal_sets(p_cal, y_cal, fold_test["prob"].to_numpy(), alpha=_CONFORMAL_ALPHA)
        fold_test["conformal_decision"] = set_decisions(sets)
        fold_test[["set_benign", "set_malignant"]] = np.asarray(sets, dtype=bool)
        rows.append(fold_test)
    pooled = pd.concat(rows, ignore_index=True)
    source = sorted(set(calibration["split"])) if "split" in calibration else ["unknown"]
    return pooled, {"calibration_source": source}


def summarise_variant(test: pd.DataFrame, calibration: pd.DataFrame, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Subject-level metrics of one variant.

    Args:
        test: out-of-fold lesion predictions of the variant (``fold, subject_id, y, prob``).
        calibration: the variant's per-fold calibration predictions (same columns plus ``split``).
        n_boot: bootstrap resamples for the AUC interval.
        seed: bootstrap seed.

    Returns:
        A JSON-ready dict: ``auc``, ``auc_ci`` (bootstrap), ``auc_ci_delong``, ``brier``, ``ece``,
        ``threshold_metrics`` (at each fold's Youden threshold), ``specificity_at_sensitivity``,
        ``net_benefit``, ``biopsies_avoided`` (at each fold's ≥98%-sensitivity threshold), ``conformal``.
    """
    pooled, meta = _per_fold(test, calibration)
    y, p = pooled["y"].to_numpy(), pooled["prob"].to_numpy()
    auc, ci = auc_with_ci(y, p, n_boot=n_boot, seed=seed)
    delong = delong_ci(y, p)
    called = (p >= pooled["youden_threshold"].to_numpy()).astype(float)
    ruled = (p >= pooled["rule_out_threshold"].to_numpy()).astype(float)
    curve = decision_curve(y, p, thresholds=np.asarray(NET_BENEFIT_THRESHOLDS))
    coverage = empirical_coverage(pooled[["set_benign", "set_malignant"]].to_numpy(), y)
    decisions = pooled["conformal_decision"].astype(str)
    return {
        "auc": auc,
        "auc_ci": list(ci),
        "auc_ci_delong": [float(delong.low), float(delong.high)],
        "brier": brier_score(y, p),
        "ece": expected_calibration_error(y, p),
        # a per-subject threshold of 0.5 on the 0/1 calls reproduces each fold's own threshold
        "threshold_metrics": {**threshold_metrics(y, called, 0.5), "threshold": "youden, per fold (calibration set)"},
        "specificity_at_sensitivity": {f"{k:.2f}": float(v) for k, v in specificity_at_sensitivity(y, p).items()},
        "net_benefit": curve.to_dict(orient="records"),
        "biopsies_avoided": {**biopsies_avoided(y, ruled, 0.5), "target_sensitivity": _RULE_OUT_SENSITIVITY,
                             "threshold": "sensitivity >= target on each fold's calibration set"},
        "conformal": {"alpha": _CONFORMAL_ALPHA, **coverage, **meta,
                      "decisions": {k: int(v) for k, v in decisions.value_counts().items()}},
    }


def compare_variants(test: pd.DataFrame, a: str, b: str) -> dict[str, float]:
    """Paired DeLong test of variant ``a`` vs ``b`` on the subjects both predicted.

    Returns:
        ``{"vs": b, "auc_difference", "z", "p"}``.
    """
    wide = {name: subject_level(test[test["variant"] == name]).set_index("subject_id") for name in (a, b)}
    common = wide[a].index.intersection(wide[b].index)
    y = wide[a].loc[common, "y"].to_numpy()
    result = delong_test(y, wide[a].loc[common, "prob"].to_numpy(), wide[b].loc[common, "prob"].to_numpy())
    return {"vs": b, "auc_difference": float(result.difference), "z": float(result.z), "p": float(result.p_value),
            "n_subjects": int(len(common))}

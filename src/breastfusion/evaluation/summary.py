"""Every number a run reports for a variant, at the subject level, with nothing tuned on a test fold.

Per repeat and fold (:func:`score_subjects`):

1. the fold's test lesions and calibration lesions (its inner validation
   subjects, or its training subjects in-sample when the run has no
   validation split) are aggregated to subjects (``evaluation.aggregation``;
   a learned aggregator is fitted on the calibration rows only);
2. a recalibration map (``evaluation.recalibration``: Platt or isotonic) is
   fitted on the calibration subjects and applied to both the test and the
   calibration subjects, so thresholds and conformal sets see scores mapped
   the same way as the scores they are applied to;
3. the operating thresholds (Youden; training sensitivity ≥ target for
   rule-out) and the conformal calibration come from the calibration
   subjects and are applied to the test subjects.

The test subjects of all folds are then pooled (:func:`summarise_scores`).
Intervals and DeLong tests use repeat 0; with several repeats the headline
metrics are also given as mean ± sd across repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from breastfusion.config import EvaluationConfig
from breastfusion.evaluation.input_checks import MetricInputError
from breastfusion.evaluation.aggregation import aggregate
from breastfusion.evaluation.clinical_utility import (
    Recalibrator,
    biopsies_avoided,
    calibration_curve_data,
    decision_curve,
    specificity_at_sensitivity,
)
from breastfusion.evaluation.conformal import conformal_sets, empirical_coverage, set_decisions
from breastfusion.evaluation.delong import delong_ci, delong_test
from breastfusion.evaluation.metrics import (
    auc_with_ci,
    brier_score,
    expected_calibration_error,
    sensitivity_threshold,
    threshold_metrics,
    youden_threshold,
)
from breastfusion.evaluation.repeats import REPEAT, first_repeat, mean_sd_across_repeats, with_repeat

__all__ = ["summarise_variant", "score_fold", "score_subjects", "summarise_scores", "paired_delong", "repeat_metrics",
           "NET_BENEFIT_THRESHOLDS", "DECISION_CURVE_THRESHOLDS", "CohortMismatchError"]

#: Threshold probabilities of the net-benefit table in results.json.
NET_BENEFIT_THRESHOLDS = (0.02, 0.05, 0.10, 0.20, 0.30, 0.40, 0.50)
#: Threshold probabilities of the decision-curve figure (its data is in results.json too).
DECISION_CURVE_THRESHOLDS = tuple(np.round(np.arange(1, 61) / 100, 2))

_SCORED_COLUMNS = ["repeat", "fold", "subject_id", "y", "prob_before_recalibration", "prob", "youden_threshold",
                   "rule_out_threshold", "set_benign", "set_malignant", "conformal_decision"]


class CohortMismatchError(MetricInputError):
    """Two sets of predictions to be compared do not describe the same subjects with the same labels."""


def score_fold(test: pd.DataFrame, calibration: pd.DataFrame, evaluation: EvaluationConfig) -> pd.DataFrame:
    """Subject scores, thresholds and conformal sets of one fold's test subjects (see module docstring)."""
    if calibration.empty:
        raise MetricInputError("a fold has test predictions but no calibration predictions; thresholds, "
                               "recalibration and conformal sets are fitted on calibration_predictions.csv")
    subjects, calib = aggregate(test, evaluation.aggregation, calibration=calibration)
    subjects["prob_before_recalibration"] = subjects["prob"]
    if evaluation.recalibration != "none":
        recalibrator = Recalibrator(evaluation.recalibration).fit(calib["prob"].to_numpy(), calib["y"].to_numpy())
        subjects["prob"] = recalibrator.predict(subjects["prob"].to_numpy())
        calib = calib.assign(prob=recalibrator.predict(calib["prob"].to_numpy()))
    y_cal, p_cal = calib["y"].to_numpy(), calib["prob"].to_numpy()
    subjects["youden_threshold"] = youden_threshold(y_cal, p_cal)
    subjects["rule_out_threshold"] = sensitivity_threshold(y_cal, p_cal, target=evaluation.target_sensitivity)
    sets = np.asarray(conformal_sets(p_cal, y_cal, subjects["prob"].to_numpy(), alpha=evaluation.conformal_alpha),
                      dtype=bool)
    subjects["set_benign"], subjects["set_malignant"] = sets[:, 0], sets[:, 1]
    subjects["conformal_decision"] = set_decisions(sets)
    return subjects


def score_subjects(test: pd.DataFrame, calibration: pd.DataFrame,
                   evaluation: EvaluationConfig | None = None) -> pd.DataFrame:
    """Out-of-fold subject scores of one variant, fold by fold, fitted on calibration rows only.

    Args:
        test: out-of-fold lesion predictions (``fold, subject_id, y, prob``; optional ``repeat``).
        calibration: the variant's calibration lesion predictions (same columns).
        evaluation: aggregation, recalibration, rule-out target and conformal alpha (default: the defaults).

    Returns:
        One row per (repeat, subject): ``repeat``, ``fold``, ``subject_id``, ``y``,
        ``prob_before_recalibration`` (aggregated), ``prob`` (aggregated, then recalibrated),
        ``youden_threshold``, ``rule_out_threshold``, ``set_benign``, ``set_malignant``,
        ``conformal_decision`` (the thresholds and sets of the fold that held the subject out).

    Raises:
        MetricInputError: no rows, or a fold without calibration rows.
        SingleClassError: a fold's calibration subjects hold one class only.
    """
    evaluation = evaluation or EvaluationConfig()
    if test.empty:
        raise MetricInputError("no test predictions to score (is the variant name right?)")
    test, calibration = with_repeat(test), with_repeat(calibration)
    calib_groups = dict(list(calibration.groupby([REPEAT, "fold"])))
    rows = []
    for (repeat, fold), fold_test in test.groupby([REPEAT, "fold"], sort=True):
        fold_calib = calib_groups.get((repeat, fold), calibration.iloc[:0])
        rows.append(score_fold(fold_test, fold_calib, evaluation).assign(repeat=int(repeat), fold=int(fold)))
    return pd.concat(rows, ignore_index=True)[_SCORED_COLUMNS]


def repeat_metrics(scored: pd.DataFrame) -> dict[str, float]:
    """The headline metrics of one repeat's pooled test subjects (the numbers spread across repeats).

    AUC, Brier and ECE of ``prob``; balanced accuracy, sensitivity, specificity and F1 at each fold's
    Youden threshold; benign biopsies avoided and cancers missed per 100 at each fold's rule-out
    threshold; conformal coverage.
    """
    y, p = scored["y"].to_numpy(), scored["prob"].to_numpy()
    called = (p >= scored["youden_threshold"].to_numpy()).astype(float)
    ruled = biopsies_avoided(y, (p >= scored["rule_out_threshold"].to_numpy()).astype(float), 0.5)
    decision = threshold_metrics(y, called, 0.5)
    return {"auc": float(roc_auc_score(y, p)),
            **{k: decision[k] for k in ("balanced_accuracy", "sensitivity", "specificity", "f1")},
            "brier": brier_score(y, p), "ece": expected_calibration_error(y, p),
            "benign_biopsies_avoided": ruled["benign_biopsies_avoided"], "cancers_missed": ruled["cancers_missed"],
            "conformal_coverage": empirical_coverage(scored[["set_benign", "set_malignant"]].to_numpy(), y)[
                "coverage"]}


def _recalibration_entry(pooled: pd.DataFrame, method: str) -> dict[str, Any]:
    y = pooled["y"].to_numpy()
    before, after = pooled["prob_before_recalibration"].to_numpy(), pooled["prob"].to_numpy()
    done = method != "none"
    return {"method": method,
            "fitted_on": "each fold's calibration subjects" if done else None,
            "brier_before": brier_score(y, before), "ece_before": expected_calibration_error(y, before),
            "brier_after": brier_score(y, after) if done else None,
            "ece_after": expected_calibration_error(y, after) if done else None}


def summarise_scores(scored: pd.DataFrame, *, n_boot: int, seed: int, evaluation: EvaluationConfig | None = None,
                     calibration_source: list[str] | None = None) -> dict[str, Any]:
    """Subject-level metrics from :func:`score_subjects`'s output.

    Args:
        scored: one row per (repeat, subject), as :func:`score_subjects` returns.
        n_boot: bootstrap resamples for the AUC interval.
        seed: bootstrap seed.
        evaluation: the settings the scores were made with (recorded, and the rule-out target).
        calibration_source: which subjects calibrated the folds (``validation`` / ``training``).

    Returns:
        A JSON-ready dict, every interval and test on repeat 0: ``auc``, ``auc_ci`` (bootstrap),
        ``auc_ci_delong``, ``brier``, ``ece`` (of the reported probabilities, after any
        recalibration), ``recalibration`` (brier/ece before and after), ``aggregation``,
        ``threshold_metrics`` (at each fold's Youden threshold), ``specificity_at_sensitivity``,
        ``net_benefit``, ``decision_curve``, ``calibration_curve``, ``biopsies_avoided`` (at each
        fold's rule-out threshold), ``conformal`` (with ``coverage``), ``fold_auc`` and ``repeats``
        (mean ± sd across repeats, ``None`` with one repeat).
    """
    evaluation = evaluation or EvaluationConfig()
    pooled = first_repeat(scored)
    y, p = pooled["y"].to_numpy(), pooled["prob"].to_numpy()
    auc, ci = auc_with_ci(y, p, n_boot=n_boot, seed=seed)
    delong = delong_ci(y, p)
    called = (p >= pooled["youden_threshold"].to_numpy()).astype(float)
    ruled = (p >= pooled["rule_out_threshold"].to_numpy()).astype(float)
    table = decision_curve(y, p, thresholds=np.asarray(NET_BENEFIT_THRESHOLDS))
    curve = decision_curve(y, p, thresholds=np.asarray(DECISION_CURVE_THRESHOLDS))
    coverage = empirical_coverage(pooled[["set_benign", "set_malignant"]].to_numpy(), y)
    decisions = pooled["conformal_decision"].astype(str)
    return {
        "auc": auc,
        "auc_ci": list(ci),
        "auc_ci_delong": [float(delong.low), float(delong.high)],
        "fold_auc": [float(roc_auc_score(g["y"], g["prob"])) for _, g in pooled.groupby("fold")],
        "brier": brier_score(y, p),
        "ece": expected_calibration_error(y, p),
        "aggregation": evaluation.aggregation,
        "recalibration": _recalibration_entry(pooled, evaluation.recalibration),
        # a per-subject threshold of 0.5 on the 0/1 calls reproduces each fold's own threshold
        "threshold_metrics": {**threshold_metrics(y, called, 0.5), "threshold": "youden, per fold (calibration set)"},
        "specificity_at_sensitivity": {f"{k:.2f}": float(v) for k, v in specificity_at_sensitivity(y, p).items()},
        "net_benefit": table.to_dict(orient="records"),
        "decision_curve": {"threshold": curve["threshold"].tolist(), "net_benefit_model": curve["model"].tolist(),
                           "net_benefit_treat_all": curve["treat_all"].tolist(), "net_benefit_treat_none": 0.0},
        "calibration_curve": calibration_curve_data(y, p, n_bins=10).to_dict(orient="records"),
        "biopsies_avoided": {**biopsies_avoided(y, ruled, 0.5), "target_sensitivity": evaluation.target_sensitivity,
                             "threshold": "sensitivity >= target on each fold's calibration set"},
        "conformal": {"alpha": evaluation.conformal_alpha, **coverage,
                      "calibration_source": calibration_source or ["unknown"],
                      "decisions": {k: int(v) for k, v in decisions.value_counts().items()}},
        "repeats": _repeats_entry(scored),
    }


def _repeats_entry(scored: pd.DataFrame) -> dict[str, Any] | None:
    spread = mean_sd_across_repeats(scored, repeat_metrics)
    if spread is None:
        return None
    return {"n_repeats": len(spread["auc"]["per_repeat"]), "metrics": spread,
            "note": "mean ± sd (ddof 1) across repeats of the cross-validation; intervals and DeLong on repeat 0"}


def summarise_variant(test: pd.DataFrame, calibration: pd.DataFrame, *, n_boot: int, seed: int,
                      evaluation: EvaluationConfig | None = None) -> dict[str, Any]:
    """Subject-level metrics of one variant: :func:`score_subjects` then :func:`summarise_scores`.

    Args:
        test: out-of-fold lesion predictions of the variant (``fold, subject_id, y, prob``; optional ``repeat``).
        calibration: the variant's per-fold calibration predictions (same columns plus ``split``).
        n_boot: bootstrap resamples for the AUC interval.
        seed: bootstrap seed.
        evaluation: aggregation, recalibration, rule-out target, conformal alpha.
    """
    source = sorted(set(calibration["split"])) if "split" in calibration else ["unknown"]
    return summarise_scores(score_subjects(test, calibration, evaluation), n_boot=n_boot, seed=seed,
                            evaluation=evaluation, calibration_source=source)


def paired_delong(a: pd.DataFrame, b: pd.DataFrame, *, names: tuple[str, str] = ("a", "b")) -> dict[str, Any]:
    """Paired DeLong test of AUC(a) − AUC(b) on the subjects both scored (repeat 0 of each).

    Args:
        a, b: subject scores (``subject_id``, ``y``, ``prob``; optional ``repeat``), one row per
            subject and repeat, e.g. from :func:`score_subjects`.
        names: how to call ``a`` and ``b`` in error messages.

    Returns:
        ``auc_a``, ``auc_b``, ``auc_difference``, ``difference_ci``, ``z``, ``p``, ``n_subjects``
        (in common), ``n_malignant``, ``n_only_a``, ``n_only_b``.

    Raises:
        CohortMismatchError: no subject in common, or a subject labelled differently in ``a`` and ``b``.
    """
    wide = [first_repeat(frame).set_index("subject_id") for frame in (a, b)]
    for frame, name in zip(wide, names):
        if not frame.index.is_unique:
            raise CohortMismatchError(f"{name}: subject ids should be unique within a repeat; "
                                      f"{frame.index[frame.index.duplicated()][:5].tolist()} repeat")
    common = wide[0].index.intersection(wide[1].index).sort_values()
    if common.empty:
        raise CohortMismatchError(f"{names[0]} and {names[1]} have no subject in common "
                                  f"(e.g. {wide[0].index[:3].tolist()} vs {wide[1].index[:3].tolist()}); "
                                  "they were not run on the same cohort")
    ya, yb = wide[0].loc[common, "y"].to_numpy(), wide[1].loc[common, "y"].to_numpy()
    if np.any(ya != yb):
        differ = common[ya != yb]
        raise CohortMismatchError(f"{names[0]} and {names[1]} label {len(differ)} common subjects differently "
                                  f"(e.g. {differ[:5].tolist()}); they were not run on the same labels")
    result = delong_test(ya, wide[0].loc[common, "prob"].to_numpy(), wide[1].loc[common, "prob"].to_numpy())
    return {"auc_a": float(result.auc_a), "auc_b": float(result.auc_b), "auc_difference": float(result.difference),
            "difference_ci": [float(result.low), float(result.high)], "z": float(result.z),
            "p": float(result.p_value), "n_subjects": int(len(common)), "n_malignant": int(ya.sum()),
            "n_only_a": int(len(wide[0].index.difference(common))),
            "n_only_b": int(len(wide[1].index.difference(common)))}

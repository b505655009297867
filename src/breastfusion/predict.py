"""Apply a bundle (:mod:`breastfusion.bundle`) to new cases: lesions → fold scores → one row per subject.

Three steps, each public so a caller (the CLI, a web page) can keep the
intermediate tables:

1. :func:`predict_lesions`: the cohort's images go through the run's
   preprocessing, each lesion through every fold network (with that fold's
   clinical preprocessor);
2. :func:`score_folds`: each fold's lesion outputs become subject scores
   exactly as the run scored its held-out subjects
   (:func:`~breastfusion.evaluation.summary.score_fold`: aggregation,
   recalibration, Youden and rule-out thresholds and conformal sets, all
   fitted on the fold's calibration subjects);
3. :func:`combine_folds`: the folds' subject scores are averaged, and each
   subject is called malignant when the mean reaches the median of the folds'
   Youden thresholds.

A missing modality is allowed (the network's missing-modality mechanism takes
it); image rows of modalities the bundle does not read are ignored with a
logged note; clinical columns the preprocessors expect but ``clinical.csv``
lacks are imputed, with a warning naming them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from breastfusion.bundle import Bundle, BundleError
from breastfusion.data.cache import ArrayCache
from breastfusion.data.manifest import LABELS, Cohort, load_cohort
from breastfusion.data.tensors import LesionDataset, build_lesion_images, clinical_features_for, modalities_used
from breastfusion.evaluation.summary import score_fold
from breastfusion.run_artifacts import prepare_batch
from breastfusion.training.module import tta_logits

__all__ = ["RUNTIMES", "PREDICTION_COLUMNS", "as_cohort", "fit_to_bundle", "predict_lesions", "score_folds", "combine_folds"]

logger = logging.getLogger(__name__)

#: Inference engines of :func:`predict_lesions`: PyTorch, or the bundle's ONNX graphs on ONNX Runtime.
RUNTIMES = ("torch", "onnx")

#: Columns of :func:`combine_folds` (``y`` and ``label`` follow when every lesion of the cohort is labelled).
PREDICTION_COLUMNS = ("subject_id", "n_lesions", "modalities_used", "prob", "prob_sd", "threshold", "call",
                      "fold_votes_malignant")


def as_cohort(cohort: Cohort | str | Path) -> Cohort:
    """A loaded cohort as is; a folder or manifest path loaded with labels optional."""
    return cohort if isinstance(cohort, Cohort) else load_cohort(cohort, require_labels=False)


def fit_to_bundle(bundle: Bundle, cohort: Cohort) -> Cohort:
    """The cohort with what the bundle does not read left out, and missing clinical columns added empty."""
    manifest, clinical = cohort.manifest, cohort.clinical
    unused = sorted(set(manifest["modality"]) - set(bundle.modalities))
    if unused:  # their rows stay: the images are never decoded, and a lesion with nothing else is reported
        logger.info("%s: ignoring %d image(s) of %s: the bundle's variant %r reads %s", cohort.root,
                    int(manifest["modality"].isin(unused).sum()), unused, bundle.variant, list(bundle.modalities))
    if bundle.clinical_preprocessors is None:
        if len(clinical.columns) > 1:
            logger.info("%s: ignoring clinical.csv: the bundle's variant %r reads %s", cohort.root, bundle.variant,
                        list(bundle.modalities))
        return Cohort(root=cohort.root, manifest=manifest, clinical=clinical)
    expected: list[str] = []
    used: list[str] = []
    for pre in bundle.clinical_preprocessors:
        expected += [c for c in pre.transformer_.feature_names_in_ if c not in expected]
        used += [c for names in pre.types_.values() for c in names if c not in used]
    if not len(clinical):
        logger.info("%s: no clinical data: the bundle's variant %r predicts without it", cohort.root, bundle.variant)
    else:
        lacking = [c for c in used if c not in clinical.columns]
        if lacking:
            warnings.warn(f"{cohort.root}: clinical.csv lacks column(s) {lacking} the model was trained with; "
                          "they are treated as missing values (imputed from the training subjects)", stacklevel=3)
        clinical = clinical.assign(**{c: np.nan for c in expected if c not in clinical.columns})
    return Cohort(root=cohort.root, manifest=manifest, clinical=clinical)


@torch.no_grad()
def predict_lesions(bundle: Bundle, cohort: Cohort | str | Path, *, batch_size: int = 64,
                    cache: bool = False, runtime: str = "torch") -> pd.DataFrame:
    """Every fold network's P(malignant) for every lesion of ``cohort``.

    Args:
        bundle: a loaded bundle.
        cohort: a cohort folder or manifest CSV (``label`` may be empty or absent), or a loaded cohort.
        batch_size: lesions per forward pass.
        cache: read and fill the preprocessed-array cache (``$BREASTFUSION_CACHE``; off: decode every image).
        runtime: ``torch`` or ``onnx`` (the bundle's ONNX graphs on ONNX Runtime, :mod:`breastfusion.onnx_export`).

    Returns:
        One row per (fold, lesion), folds in order, lesions in manifest order: ``fold``, ``subject_id``,
        ``lesion_id``, ``prob`` (the fold network's output, before aggregation or recalibration),
        ``modalities_used`` (``;``-joined), then ``y`` and ``label`` when every lesion is labelled
        (``label`` alone, empty where unknown, when some are).

    Raises:
        ManifestError, FileNotFoundError: the cohort breaks the manifest contract.
        ImageReadError: unreadable images (unless the run's config excludes them).
        BundleError: no lesion has any modality the bundle reads, or ``runtime`` onnx for a bundle without graphs.
        ValueError: an unknown ``runtime``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime should be one of {list(RUNTIMES)}, got {runtime!r}")
    cohort = fit_to_bundle(bundle, as_cohort(cohort))
    lesions = cohort.lesions
    images = build_lesion_images(cohort, bundle.preprocessing, cache=ArrayCache(enabled=cache),
                                 exclude_unreadable=bundle.config.exclude_unreadable)
    if images.excluded:
        warnings.warn(f"{len(images.excluded)} unreadable image(s) left out: {images.excluded[:5]}", stacklevel=2)
    positions = np.arange(len(lesions))
    frames, used = [], None
    for k, net in enumerate(bundle.networks):
        clinical = (clinical_features_for(lesions, cohort.clinical, bundle.clinical_preprocessors[k])
                    if bundle.clinical_preprocessors is not None else (None, None))
        data = LesionDataset(images, positions, lesions["y"].to_numpy(), bundle.modalities, *clinical)
        if used is None:
            used = modalities_used(data.tensors, bundle.modalities)
        prob = (_fold_probs(bundle, k, net, data, batch_size) if runtime == "torch"
                else _onnx_fold_probs(bundle, k, data, batch_size))
        frames.append(pd.DataFrame({"fold": k, "subject_id": lesions["subject_id"].to_numpy(),
                                    "lesion_id": lesions["lesion_id"].to_numpy(), "prob": prob,
                                    "modalities_used": used}))
    out = pd.concat(frames, ignore_index=True)
    labelled = lesions["label"].isin(LABELS).to_numpy()
    if labelled.any():
        per_lesion = lesions.set_index("lesion_id")
        if labelled.all():
            out["y"] = per_lesion.loc[out["lesion_id"], "y"].to_numpy()
        out["label"] = per_lesion.loc[out["lesion_id"], "label"].fillna("").to_numpy()
    blind = out["modalities_used"] == ""
    if blind.all():
        raise BundleError(f"{cohort.root}: no lesion has any of the modalities the bundle reads "
                          f"({list(bundle.modalities)}); nothing to predict")
    if blind.any():
        left = sorted(set(out.loc[blind, "lesion_id"]))
        warnings.warn(f"lesion(s) {left[:10]} have none of the bundle's modalities {list(bundle.modalities)}; "
                      "they are left out", stacklevel=2)
        out = out[~blind].reset_index(drop=True)
    return out


def _fold_probs(bundle: Bundle, k: int, net, data: LesionDataset, batch_size: int) -> np.ndarray:
    """Fold ``k``'s P(malignant) per lesion: the network's output, or for a stage-2 bundle its learner's on the
    network's deep features (the same feature table the run fitted it on)."""
    if not len(data):
        return np.zeros(0)
    if bundle.stage2_learners is None:
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        tta = bundle.config.training.tta
        return torch.cat([torch.sigmoid(tta_logits(net, prepare_batch(b), tta)) for b in loader]).numpy()
    from breastfusion.models.stage2 import feature_table
    from breastfusion.training.fit import extract_features

    table = feature_table(extract_features(net, data, batch_size=batch_size),
                          bundle.config.variant_model(bundle.variant).fusion, bundle.config.stage2.features)
    return bundle.stage2_learners[k].predict_proba(table.values)[:, 1]


def _onnx_fold_probs(bundle: Bundle, k: int, data: LesionDataset, batch_size: int) -> np.ndarray:
    """:func:`_fold_probs` through fold ``k``'s ONNX graph (probabilities, or deep features for a stage-2 learner)."""
    if not len(data):
        return np.zeros(0)
    out = bundle.onnx_fold(k).predict(data, batch_size=batch_size)
    if bundle.stage2_learners is None:
        return out["prob"].astype(float)
    from breastfusion.models.stage2 import feature_table

    table = feature_table({name: v.astype(np.float64) for name, v in out.items()},
                          bundle.config.variant_model(bundle.variant).fusion, bundle.config.stage2.features)
    return bundle.stage2_learners[k].predict_proba(table.values)[:, 1]


def score_folds(bundle: Bundle, lesions: pd.DataFrame) -> pd.DataFrame:
    """Each fold's subject scores, as the run scored its held-out subjects.

    Args:
        bundle: the bundle that made ``lesions``.
        lesions: :func:`predict_lesions`'s output.

    Returns:
        One row per (fold, subject), subjects sorted within a fold: ``fold``, ``subject_id``,
        ``n_lesions``, ``modalities_used`` (over the subject's lesions), ``prob_before_recalibration``
        (aggregated), ``prob`` (aggregated, then recalibrated), ``youden_threshold``,
        ``rule_out_threshold``, ``set_benign``, ``set_malignant``, ``conformal_decision``, then ``y``
        and ``label`` when ``lesions`` has ``y``. Without labels the aggregation sees placeholder labels
        (0), which no score depends on.
    """
    labelled = "y" in lesions.columns
    frames = []
    for k, fold in lesions.groupby("fold", sort=True):
        test = fold[["subject_id", "lesion_id", "prob"]].assign(y=fold["y"] if labelled else 0)
        scored = score_fold(test, bundle.calibration[bundle.calibration["fold"] == k], bundle.config.evaluation)
        per_subject = fold.groupby("subject_id").agg(
            n_lesions=("lesion_id", "size"),
            modalities_used=("modalities_used", lambda s: _union(s, bundle.modalities)))
        scored = scored.join(per_subject, on="subject_id")
        scored.insert(0, "fold", int(k))
        frames.append(scored)
    out = pd.concat(frames, ignore_index=True)
    columns = ["fold", "subject_id", "n_lesions", "modalities_used", "prob_before_recalibration", "prob",
               "youden_threshold", "rule_out_threshold", "set_benign", "set_malignant", "conformal_decision"]
    if labelled:
        out["y"] = out["y"].astype(int)
        out["label"] = np.where(out["y"] == 1, LABELS[1], LABELS[0])
        columns += ["y", "label"]
    return out[columns]


def _union(values: pd.Series, order: tuple[str, ...]) -> str:
    have = {m for v in values for m in str(v).split(";") if m}
    return ";".join(m for m in order if m in have)


def combine_folds(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per subject from :func:`score_folds`'s output.

    Returns:
        ``subject_id``, ``n_lesions``, ``modalities_used``, ``prob`` (mean over folds of each fold's
        recalibrated subject probability), ``prob_sd`` (its sd over folds, ddof 1), ``threshold`` (median
        of the folds' Youden thresholds), ``call`` (``malignant`` when ``prob >= threshold``, else
        ``benign``), ``fold_votes_malignant`` (folds whose own probability reaches their own Youden
        threshold), then ``y`` and ``label`` when the scores carry labels. Subjects sorted by id.
    """
    scores = scores.assign(vote=(scores["prob"] >= scores["youden_threshold"]).astype(int))
    grouped = scores.groupby("subject_id", sort=True)
    out = grouped.agg(n_lesions=("n_lesions", "first"), modalities_used=("modalities_used", "first"),
                      prob=("prob", "mean"), prob_sd=("prob", lambda s: s.std(ddof=1)),
                      threshold=("youden_threshold", "median"), fold_votes_malignant=("vote", "sum")).reset_index()
    out.insert(out.columns.get_loc("fold_votes_malignant"), "call",
               np.where(out["prob"] >= out["threshold"], "malignant", "benign"))
    columns = list(PREDICTION_COLUMNS)
    if "y" in scores.columns:
        out = out.join(grouped[["y", "label"]].first(), on="subject_id")
        columns += ["y", "label"]
    return out[columns]

"""Apply a bundle (:mod:`breastfusion.bundle`) to new cases: lesions → fold scores → one row per subject.

Three steps, each public so a caller (the CLI, a web page) can keep the
intermediate tables:

1. :func:`predict_lesions`: the cohort's images (a folder, a manifest
   DataFrame, or one case held in memory: :func:`case_cohort_for`) go through the run's
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

:func:`external_validation` then summarises a labelled new cohort (AUC with a
bootstrap interval; sensitivity, specificity, PPV and NPV at the bundle's
threshold) and warns when the cohort's prevalence or score distribution differs
from the training cohort's (:mod:`breastfusion.evaluation.external`).

A missing modality is allowed (the network's missing-modality mechanism takes
it); image rows of modalities the bundle does not read are ignored with a
logged note; clinical columns the preprocessors expect but ``clinical.csv``
lacks are imputed, with a warning naming them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from breastfusion.bundle_meta import BundleError
from breastfusion.data.cache import ArrayCache
from breastfusion.data.in_memory import InMemoryCaseError, case_cohort
from breastfusion.data.manifest import IMAGE_MODALITIES, LABELS, Cohort, cohort_from_frame, load_cohort
from breastfusion.data.tensors import (LesionDataset, LesionImages, append_views, build_lesion_images,
                                       clinical_features_for, modalities_used)
from breastfusion.evaluation.external import TRANSFER_ADVICE, decision_metrics, prevalence_shift, score_shift
from breastfusion.evaluation.metrics import auc_with_ci
from breastfusion.evaluation.summary import score_fold
from breastfusion.data.transforms import prepare_batch
from breastfusion.strict_json import json_safe
from breastfusion.training.module import tta_logits

if TYPE_CHECKING:  # annotations only: Bundle calls this module, so importing it back would make a circle
    from breastfusion.bundle import Bundle

__all__ = ["RUNTIMES", "PREDICTION_COLUMNS", "as_cohort", "case_cohort_for", "clinical_columns", "cohort_for",
           "fit_to_bundle", "fold_probs", "onnx_fold_probs", "predict_lesions", "score_folds",
           "combine_folds", "training_scores", "external_validation"]

logger = logging.getLogger(__name__)

#: Inference engines of :func:`predict_lesions`: PyTorch, or the bundle's ONNX graphs on ONNX Runtime.
RUNTIMES = ("torch", "onnx")

#: Columns of :func:`combine_folds` (``y`` and ``label`` follow when every lesion of the cohort is labelled).
PREDICTION_COLUMNS = ("subject_id", "n_lesions", "modalities_used", "prob", "prob_sd", "threshold", "call",
                      "fold_votes_malignant")


def as_cohort(cohort: Cohort | pd.DataFrame | str | Path, *, clinical: pd.DataFrame | None = None,
              root: str | Path | None = None) -> Cohort:
    """A loaded cohort as is; a folder or manifest path loaded with labels optional; a manifest DataFrame (with
    its ``clinical`` table and the ``root`` its relative paths resolve against) validated in memory by
    :func:`~breastfusion.data.manifest.cohort_from_frame`, as :meth:`breastfusion.api.Experiment.fit` does.

    Raises:
        TypeError: ``clinical`` or ``root`` without a manifest DataFrame.
    """
    if isinstance(cohort, pd.DataFrame):
        return cohort_from_frame(cohort, clinical, root=root, require_labels=False, allow_outside_root=True)
    if clinical is not None or root is not None:
        raise TypeError("clinical= (a table) and root= go with a manifest DataFrame; a cohort folder has its own "
                        "clinical.csv and is its own root")
    return cohort if isinstance(cohort, Cohort) else load_cohort(cohort, require_labels=False)


def clinical_columns(bundle: Bundle) -> tuple[list[str], list[str]]:
    """(every column the fold preprocessors were fitted on, those they use), in first-fold order."""
    expected: list[str] = []
    used: list[str] = []
    for pre in bundle.clinical_preprocessors or []:
        expected += [c for c in pre.transformer_.feature_names_in_ if c not in expected]
        used += [c for names in pre.types_.values() for c in names if c not in used]
    return expected, used


def _case_clinical(bundle: Bundle, clinical: Mapping[str, Any]) -> dict[str, Any]:
    """One case's clinical values checked against what the bundle's preprocessors read, numbers made numbers."""
    if bundle.clinical_preprocessors is None:
        raise InMemoryCaseError(f"clinical: the bundle's variant {bundle.variant!r} reads no clinical data (it reads "
                                f"{list(bundle.modalities)}); leave clinical out")
    _, used = clinical_columns(bundle)
    unknown = [c for c in clinical if c not in used]
    if unknown:
        raise InMemoryCaseError(f"clinical: unknown column(s) {unknown}; the bundle's model reads {used}")
    lacking = [c for c in used if c not in clinical]
    if lacking:
        raise InMemoryCaseError(f"clinical: missing column(s) {lacking} the bundle's model was trained with; give "
                                "each one (None for an unknown value: it is imputed as in training)")
    numeric = {c for pre in bundle.clinical_preprocessors for c in (*pre.types_["numeric"], *pre.types_["binary"])}
    row = {}
    for column, value in clinical.items():
        if value is None or column not in numeric:
            row[column] = np.nan if value is None and column in numeric else value
            continue
        try:
            row[column] = float(value)
        except (TypeError, ValueError):
            raise InMemoryCaseError(f"clinical[{column!r}]: got {value!r}; expected a number (or None when "
                                    "unknown)") from None
        if np.isinf(row[column]):
            raise InMemoryCaseError(f"clinical[{column!r}]: got {value!r}; expected a finite number")
    return row


def case_cohort_for(bundle: Bundle, images: Mapping[str, Any] | None, clinical: Mapping[str, Any] | None = None
                    ) -> Cohort:
    """One in-memory case (:func:`~breastfusion.data.in_memory.case_cohort`) checked against what ``bundle`` reads.

    Raises:
        InMemoryCaseError: an image modality the bundle does not read, an ROI-cropping bundle (in-memory cases
            carry no ROI), clinical values for a bundle without clinical data, an unknown or missing clinical
            column, or a non-numeric value for a numeric one; the message names the key.
        ImageReadError: an image that does not decode.
    """
    for modality in images or {}:
        if modality in IMAGE_MODALITIES and modality not in bundle.modalities:
            raise InMemoryCaseError(f"images[{modality!r}]: the bundle's variant {bundle.variant!r} does not read "
                                    f"{modality}; it reads {list(bundle.modalities)}")
        if modality in IMAGE_MODALITIES and bundle.preprocessing[modality].roi not in ("none", "predicted"):
            raise InMemoryCaseError(f"images[{modality!r}]: the bundle crops {modality} to a lesion ROI "
                                    f"(roi={bundle.preprocessing[modality].roi!r}), which an in-memory case does "
                                    "not carry; predict a cohort folder whose manifest gives the ROI")
    return case_cohort(images, None if clinical is None else _case_clinical(bundle, clinical))


def localised_images(bundle: Bundle, cohort: Cohort, *, cache: bool = False) -> LesionImages:
    """The cohort's images as the bundle's networks read them; a modality cropped to a localiser's box
    (``roi: predicted``) is boxed by the bundle's fold localisers (the mean of their maps), not by a reader."""
    from breastfusion.experiment.localisation import crop_to_predicted

    params, localisers = bundle.preprocessing, getattr(bundle, "localisers", None) or {}
    whole = {m: replace(p, roi="none") if m in localisers else p for m, p in params.items()}
    images = build_lesion_images(cohort, whole, cache=ArrayCache(enabled=cache),
                                 exclude_unreadable=bundle.config.exclude_unreadable)
    for modality, models in localisers.items():
        cfg = getattr(bundle.config.model, modality).localiser
        if cfg.views == "crop_and_frame":  # the whole frames stay as the extra views; the first slots become crops
            images = append_views(images, images, modality)
        images, _ = crop_to_predicted(images, cohort, modality, params[modality], models, cfg)
    images.params.update({m: params[m].to_dict() for m in localisers})
    return images


def cohort_for(bundle: Bundle, cohort: Cohort | pd.DataFrame | str | Path | None = None, *,
               images: Mapping[str, Any] | None = None, clinical: pd.DataFrame | Mapping[str, Any] | None = None,
               root: str | Path | None = None) -> Cohort:
    """The cohort a prediction reads: ``cohort`` (:func:`as_cohort`), or one case from ``images`` / ``clinical``
    (:func:`case_cohort_for`, nothing written).

    Raises:
        TypeError: both or neither of a cohort and ``images`` given, or ``clinical`` of the wrong kind.
    """
    if cohort is None:
        if images is None and clinical is None:
            raise TypeError("nothing to predict: pass a cohort (folder, manifest CSV, manifest DataFrame or Cohort), "
                            "or one case as images={modality: image(s)}, clinical={column: value}")
        if isinstance(clinical, pd.DataFrame) or root is not None:
            raise TypeError("with images=, clinical is one case's dict {column: value} and root= is not used; a "
                            "clinical table goes with a manifest DataFrame")
        return case_cohort_for(bundle, images, clinical)
    if images is not None:
        raise TypeError("pass either a cohort or images= (one in-memory case), not both")
    if clinical is not None and not isinstance(clinical, pd.DataFrame):
        raise TypeError(f"clinical: with a cohort, expected a clinical table (DataFrame), got "
                        f"{type(clinical).__name__}; a dict of one case's values goes with images=")
    return as_cohort(cohort, clinical=clinical, root=root)


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
        return replace(cohort, manifest=manifest, clinical=clinical)
    expected, used = clinical_columns(bundle)
    if not len(clinical):
        logger.info("%s: no clinical data: the bundle's variant %r predicts without it", cohort.root, bundle.variant)
    else:
        lacking = [c for c in used if c not in clinical.columns]
        if lacking:
            warnings.warn(f"{cohort.root}: clinical.csv lacks column(s) {lacking} the model was trained with; "
                          "they are treated as missing values (imputed from the training subjects)", stacklevel=3)
        clinical = clinical.assign(**{c: np.nan for c in expected if c not in clinical.columns})
    return replace(cohort, manifest=manifest, clinical=clinical)


@torch.no_grad()
def predict_lesions(bundle: Bundle, cohort: Cohort | pd.DataFrame | str | Path | None = None, *,
                    images: Mapping[str, Any] | None = None, clinical: pd.DataFrame | Mapping[str, Any] | None = None,
                    root: str | Path | None = None, batch_size: int = 64, cache: bool = False,
                    runtime: str = "torch") -> pd.DataFrame:
    """Every fold network's P(malignant) for every lesion of ``cohort``, or of one case held in memory.

    Args:
        bundle: a loaded bundle.
        cohort: a cohort folder or manifest CSV (``label`` may be empty or absent), a loaded cohort, or a manifest
            DataFrame (the columns of ``manifest.csv``; with ``clinical`` its clinical table and ``root`` the
            folder its relative paths resolve against, default the working directory).
        images: instead of ``cohort``, one case (subject and lesion ``case``): ``{image modality: image}``, an
            image being a pixel array, an encoded file's bytes or an ``ImageData``, or a list or ``{view: image}``
            of them (:func:`~breastfusion.data.in_memory.case_cohort`); nothing is written to disk.
        clinical: with ``images``, the case's values ``{column: value}`` (every column the bundle reads; ``None``
            for an unknown value); with a manifest DataFrame, its clinical table.
        root: with a manifest DataFrame, the folder its relative image paths resolve against.
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
        ImageReadError: unreadable images (unless the run's config excludes them); an in-memory image that does
            not decode (its key named).
        InMemoryCaseError: a bad in-memory case (:func:`case_cohort_for`: the key and what was expected).
        BundleError: no lesion has any modality the bundle reads, or ``runtime`` onnx for a bundle without graphs.
        TypeError: both or neither of ``cohort`` and ``images``, or ``clinical`` / ``root`` of the wrong kind.
        ValueError: an unknown ``runtime``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime should be one of {list(RUNTIMES)}, got {runtime!r}")
    cohort = fit_to_bundle(bundle, cohort_for(bundle, cohort, images=images, clinical=clinical, root=root))
    lesions = cohort.lesions
    images = localised_images(bundle, cohort, cache=cache)
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
        prob = (fold_probs(bundle, k, net, data, batch_size) if runtime == "torch"
                else onnx_fold_probs(bundle, k, data, batch_size))
        if bundle.score_learners is not None:
            prob = _with_clinical_score(bundle, k, net, data, prob)
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


def fold_probs(bundle: Bundle, k: int, net, data: LesionDataset, batch_size: int) -> np.ndarray:
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


def _with_clinical_score(bundle: Bundle, k: int, net, data: LesionDataset, prob: np.ndarray) -> np.ndarray:
    """Score-level fusion: fold ``k``'s image-network probability averaged with its clinical learner's."""
    from breastfusion.models.score_fusion import average_scores

    if not len(data):
        return prob
    features, present = data.tensors["clinical"].numpy(), data.tensors["clinical_present"].numpy()
    clinical = np.full(len(prob), np.nan)
    if present.any():
        clinical[present] = bundle.score_learners[k].predict_proba(features[present])[:, 1]
    image_present = np.array([u != "" for u in modalities_used(data.tensors, tuple(net.modalities))])
    return average_scores(prob, clinical, image_present=image_present, clinical_present=present)


def onnx_fold_probs(bundle: Bundle, k: int, data: LesionDataset, batch_size: int) -> np.ndarray:
    """:func:`fold_probs` through fold ``k``'s ONNX graph (probabilities, or deep features for a stage-2 learner)."""
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


def training_scores(bundle: Bundle) -> pd.DataFrame:
    """The bundle's scores of its calibration subjects, on the scale of :func:`combine_folds`'s ``prob``.

    Each fold's calibration lesions (``calibration.csv``: the run's training subjects of that fold, held out
    for validation or in-sample, see ``split``) are aggregated and recalibrated by that fold's own maps, exactly
    as :func:`score_folds` scores new subjects; a subject that calibrated several folds gets the mean of those
    folds' probabilities, as a new subject gets the mean over folds.

    Returns:
        One row per calibration subject: ``subject_id`` (anonymous), ``y``, ``prob``, ``n_folds``.
    """
    frames = []
    for k, rows in bundle.calibration.groupby("fold", sort=True):
        scored = score_fold(rows[["subject_id", "lesion_id", "prob", "y"]], rows, bundle.config.evaluation)
        frames.append(scored[["subject_id", "y", "prob"]].assign(fold=int(k)))
    every = pd.concat(frames, ignore_index=True)
    return every.groupby("subject_id", sort=True).agg(y=("y", "max"), prob=("prob", "mean"),
                                                      n_folds=("fold", "size")).reset_index()


def _training_counts(bundle: Bundle, reference: pd.DataFrame) -> tuple[int, int, str]:
    """(subjects, malignant, where from): the run's out-of-fold counts in bundle.json, else the calibration's."""
    metrics = bundle.meta.get("metrics") or {}
    if isinstance(metrics.get("n_subjects"), int) and isinstance(metrics.get("n_malignant"), int):
        return metrics["n_subjects"], metrics["n_malignant"], "bundle.json metrics (the run's subjects)"
    return len(reference), int(reference["y"].sum()), "calibration.csv (the folds' calibration subjects)"


def external_validation(predictions: pd.DataFrame, bundle: Bundle, *, n_boot: int | None = None,
                        seed: int | None = None) -> dict:
    """How the bundle does on a new cohort, and whether that cohort looks like the one it was trained on.

    External validation is where a model's threshold meets another site's data; the run's own figures
    (``bundle.meta["metrics"]``) describe the training cohort only. With labels this gives the subject-level
    AUC with a stratified-bootstrap interval and sensitivity / specificity / PPV / NPV of the ``call`` column
    (the bundle's threshold, fixed at training: nothing is tuned on the new cohort). With or without labels it
    compares the cohort with the training cohort (:mod:`breastfusion.evaluation.external`): prevalence
    (labelled cohorts only) and the distribution of subject probabilities against :func:`training_scores`.
    Each shift found is logged as a warning and listed under ``warnings``.

    Args:
        predictions: :func:`combine_folds`'s output for the cohort (``Bundle.predict``); ``y`` present means
            labelled.
        bundle: the bundle that made them.
        n_boot: bootstrap resamples for the AUC interval (default: the run's ``cv.bootstrap``).
        seed: bootstrap seed (default: the run's ``cv.seed``).

    Returns:
        A JSON-ready dict: ``variant``, ``n_subjects``, ``labelled``, ``n_malignant``, ``prevalence``, ``auc``,
        ``auc_ci`` (95%, ``None`` when a class is absent), ``n_boot``, ``at_threshold`` (decision metrics and
        counts of ``call``; ``None`` unlabelled), ``training`` (the run's counts, out-of-fold AUC and
        decision metrics at each fold's threshold, and the calibration split of the reference scores),
        ``prevalence_shift`` (``None`` unlabelled),
        ``score_shift``, ``warnings`` (list of str, empty when the cohort looks like training).

    Raises:
        BundleError: ``predictions`` lacks a column of :data:`PREDICTION_COLUMNS`.
    """
    lacking = [c for c in ("subject_id", "prob", "call") if c not in predictions.columns]
    if lacking:
        raise BundleError(f"predictions lack column(s) {lacking}; expected Bundle.predict's output with columns "
                          f"{list(PREDICTION_COLUMNS)}")
    n_boot = n_boot or bundle.config.cv.bootstrap
    seed = bundle.config.cv.seed if seed is None else seed
    reference = training_scores(bundle)
    n_train, k_train, source = _training_counts(bundle, reference)
    metrics = bundle.meta.get("metrics") or {}
    labelled = "y" in predictions.columns
    y = predictions["y"].to_numpy().astype(int) if labelled else None
    p = predictions["prob"].to_numpy(dtype=float)
    out: dict = {
        "variant": bundle.variant, "n_subjects": int(len(predictions)), "labelled": labelled,
        "n_malignant": int(y.sum()) if labelled else None, "prevalence": float(y.mean()) if labelled else None,
        "auc": None, "auc_ci": None, "n_boot": n_boot, "at_threshold": None,
        "threshold": "each subject's `threshold` column: the median of the folds' Youden thresholds, chosen on "
                     "the training cohort",
        "training": {"n_subjects": n_train, "n_malignant": k_train, "prevalence": k_train / n_train,
                     "counts_from": source, "auc_out_of_fold": metrics.get("auc"),
                     "auc_ci_out_of_fold": metrics.get("auc_ci"),
                     "at_threshold_out_of_fold": {k: v for k, v in (metrics.get("threshold_metrics") or {}).items()
                                                  if k in ("sensitivity", "specificity", "ppv", "npv")} or None,
                     "reference_scores": "the folds' calibration subjects, split "
                                         f"{sorted(set(bundle.calibration['split']))}"},
        "prevalence_shift": None, "score_shift": None, "warnings": [],
    }
    if labelled:
        if len(np.unique(y)) == 2:
            auc, ci = auc_with_ci(y, p, n_boot=n_boot, seed=seed)
            out["auc"], out["auc_ci"] = auc, list(ci)
        out["at_threshold"] = decision_metrics(y, (predictions["call"] == "malignant").to_numpy().astype(int))
        shift = out["prevalence_shift"] = prevalence_shift(len(y), int(y.sum()), n_train, k_train)
        if shift["shifted"]:
            out["warnings"].append(
                f"prevalence {shift['prevalence_new']:.2f} ({int(y.sum())}/{len(y)} malignant) differs from the "
                f"training cohort's {shift['prevalence_training']:.2f} ({k_train}/{n_train}; Fisher's exact "
                f"p = {shift['p_value']:.2g}, tolerance {shift['tolerance']:.2f}): PPV and NPV at the bundle "
                f"threshold do not carry over, and {TRANSFER_ADVICE}")
    shift = out["score_shift"] = score_shift(p, reference["prob"].to_numpy())
    if shift["shifted"]:
        out["warnings"].append(
            f"the subject probabilities (median {shift['median_new']:.3f}) are distributed unlike the bundle's "
            f"scores of its training subjects (median {shift['median_training']:.3f}; Kolmogorov-Smirnov "
            f"D = {shift['ks_statistic']:.2f}, p = {shift['p_value']:.2g}): {TRANSFER_ADVICE}"
            + (" (the bundle's reference scores are its networks' in-sample scores of their own training subjects, "
               "more extreme than held-out ones; a run with training.val_fraction > 0 gives held-out ones)"
               if set(bundle.calibration["split"]) == {"training"} else ""))
    for message in out["warnings"]:
        logger.warning("%s", message)
    return json_safe(out)

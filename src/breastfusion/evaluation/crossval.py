"""Cross-validate every variant (modality subset) on one shared set of subject-grouped folds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from breastfusion.config import ExperimentConfig, TrainingConfig
from breastfusion.data.cache import ArrayCache
from breastfusion.data.clinical import ClinicalPreprocessor
from breastfusion.data.manifest import IMAGE_MODALITIES, Cohort
from breastfusion.data.preprocess import Params, params_for
from breastfusion.data.tensors import LesionDataset, build_lesion_images, clinical_features_for
from breastfusion.evaluation.splits import subject_folds
from breastfusion.models.network import build_network
from breastfusion.training.fit import clear_work_dir, fit_predict, predict_probs

__all__ = ["CrossValidation", "MissingModalityError", "check_modalities", "cross_validate", "inner_split", "preprocessing_params"]


@dataclass
class CrossValidation:
    """What :func:`cross_validate` produced.

    Attributes:
        predictions: out-of-fold predictions, one row per (variant, lesion): ``variant``, ``fold``,
            ``subject_id``, ``lesion_id``, ``y``, ``prob``, in the config's variant order.
        calibration: each fold's calibration scores (its inner validation lesions, or its training
            lesions in-sample when there is no validation split; ``split`` says which). Thresholds,
            recalibration and conformal sets are fitted on these only.
        preprocessing: per-modality preprocessing parameters used.
        excluded_images: unreadable images left out (only with ``exclude_unreadable``).
    """

    predictions: pd.DataFrame
    calibration: pd.DataFrame
    preprocessing: dict[str, dict]
    excluded_images: list[str]


class MissingModalityError(ValueError):
    """A variant needs a modality the cohort does not have."""


def check_modalities(cohort: Cohort, config: ExperimentConfig) -> None:
    """Fail up front when a variant needs a modality that no subject has.

    Raises:
        MissingModalityError: naming the variant and the modality.
    """
    have = set(cohort.modalities)
    for name in config.variants:
        modalities = config.modalities(name)
        lacking = [m for m in modalities if m not in have]
        if lacking:
            raise MissingModalityError(f"variant {name!r} needs {lacking}, but the cohort at {cohort.root} has only "
                                       f"{sorted(have)}; drop the variant or add the data")


def _clinical_inputs(cohort: Cohort, config: ExperimentConfig, fit_on: pd.DataFrame, *parts: pd.DataFrame):
    """Clinical features fitted on the ``fit_on`` lesions' subjects only, applied to each of ``parts``."""
    cfg = config.model.clinical
    train_rows = cohort.clinical[cohort.clinical["subject_id"].isin(fit_on["subject_id"])]
    preprocessor = ClinicalPreprocessor(cfg.numeric, cfg.categorical, cfg.binary).fit(train_rows)
    return preprocessor, [clinical_features_for(part, cohort.clinical, preprocessor) for part in parts]


def preprocessing_params(config: ExperimentConfig, modalities: list[str]) -> dict[str, Params]:
    """Each image modality's preprocessing: its defaults, the branch's image size, then the config's overrides."""
    out = {}
    for m in modalities:
        branch = getattr(config.model, m)
        out[m] = params_for(m, **{"size": branch.image_size, **branch.preprocess})
    return out


def inner_split(lesions: pd.DataFrame, train_idx: np.ndarray, *, fraction: float, seed: int):
    """Split a fold's training positions into (fit, validation), grouped by subject and stratified."""
    n_splits = max(2, round(1 / fraction))
    fit, val = subject_folds(lesions.iloc[train_idx], n_splits=n_splits, seed=seed)[0]
    return train_idx[fit], train_idx[val]


def _training_plan(config: ExperimentConfig, modalities: tuple[str, ...]) -> TrainingConfig:
    """The training settings of a variant: a short fine-tune when it starts from single-modality branches."""
    singles = {config.modalities(name) for name in config.variants if len(config.modalities(name)) == 1}
    if len(modalities) > 1 and config.model.init_from_single and all((m,) in singles for m in modalities):
        t = config.training
        return t.model_copy(update={"epochs": t.finetune_epochs, "lr": t.lr * t.finetune_lr_scale})
    return config.training


def cross_validate(cohort: Cohort, config: ExperimentConfig, *, progress: Progress | None = None,
                   checkpoint_dir: Path | None = None) -> CrossValidation:
    """Train and predict every variant on every fold.

    Single-modality variants run first; a multimodal variant then starts its
    branches from them (same fold, so the same training subjects) when
    ``model.init_from_single`` is set. With ``checkpoint_dir``, each finished
    fold leaves ``{variant}/fold{k}.safetensors`` (weights only) and
    ``{variant}/fold{k}.csv`` (its predictions), and each running fold a
    checkpoint per epoch: calling again with the same folder skips finished
    folds and resumes an interrupted one from its last epoch, giving the same
    numbers as an uninterrupted run.

    Args:
        cohort: a validated cohort.
        config: the experiment (variants, model, training, cv).
        progress: a rich Progress to report decoding and training on.
        checkpoint_dir: the run's checkpoint folder (``None``: keep nothing).

    Returns:
        The out-of-fold predictions, each fold's calibration scores, and how images were prepared.
    """
    check_modalities(cohort, config)
    lesions = cohort.lesions
    folds = subject_folds(lesions, n_splits=config.cv.n_splits, seed=config.cv.seed)
    used = {m for name in config.variants for m in config.modalities(name)}
    params = preprocessing_params(config, [m for m in IMAGE_MODALITIES if m in used])
    n_images = int(cohort.manifest["modality"].isin(list(params)).sum())
    decode_task = progress.add_task("decoding + preprocessing images", total=n_images) if progress else None
    images = build_lesion_images(cohort, params, cache=ArrayCache(enabled=config.cache),
                                 exclude_unreadable=config.exclude_unreadable,
                                 on_image=(lambda: progress.advance(decode_task)) if progress else None)
    order = sorted(config.variants, key=lambda name: len(config.modalities(name)) > 1)
    plans = {name: _training_plan(config, config.modalities(name)) for name in order}
    total_epochs = len(folds) * sum(plan.epochs for plan in plans.values())
    train_task = progress.add_task("training", total=total_epochs) if progress else None

    single_branches: dict[tuple[int, str], dict] = {}  # (fold, modality) -> branch weights
    rows = []
    for variant in order:
        modalities = config.modalities(variant)
        for k, (train_idx, test_idx) in enumerate(folds):
            if progress:
                progress.update(train_task, description=f"training {variant} · fold {k + 1}/{len(folds)}")
            done = _load_finished(checkpoint_dir, variant, k)
            if done is not None:
                predictions, state = done
                if progress:
                    progress.advance(train_task, plans[variant].epochs)
            else:
                predictions, state = _run_fold(cohort, config, images, lesions, variant, modalities, k, train_idx,
                                               test_idx, plans[variant], single_branches, checkpoint_dir,
                                               (lambda: progress.advance(train_task)) if progress else None)
            if len(modalities) == 1:
                prefix = f"branches.{modalities[0]}."
                single_branches[(k, modalities[0])] = {n[len(prefix):]: t for n, t in state.items()
                                                       if n.startswith(prefix)}
            rows.append(predictions)
    every = pd.concat(rows, ignore_index=True)
    predictions = every[every["split"] == "test"].drop(columns="split")
    predictions["variant"] = pd.Categorical(predictions["variant"], categories=list(config.variants), ordered=True)
    predictions = predictions.sort_values(["variant", "fold"], kind="stable").astype({"variant": str})
    return CrossValidation(predictions=predictions.reset_index(drop=True),
                           calibration=every[every["split"] != "test"].reset_index(drop=True),
                           preprocessing=images.params, excluded_images=images.excluded)


def _load_finished(checkpoint_dir: Path | None, variant: str, k: int):
    if checkpoint_dir is None:
        return None
    weights, table = checkpoint_dir / variant / f"fold{k}.safetensors", checkpoint_dir / variant / f"fold{k}.csv"
    if not (weights.is_file() and table.is_file()):
        return None
    return pd.read_csv(table, dtype={"subject_id": str, "lesion_id": str}), load_file(str(weights))


def _run_fold(cohort, config, images, lesions, variant, modalities, k, train_idx, test_idx, training,
              single_branches, checkpoint_dir, on_epoch):
    """Train one variant on one fold; returns (predictions frame, network state)."""
    seed = config.training.seed + 1000 * k
    val_idx = None
    if config.training.val_fraction > 0:
        train_idx, val_idx = inner_split(lesions, train_idx, fraction=config.training.val_fraction, seed=seed)
    train, test = lesions.iloc[train_idx], lesions.iloc[test_idx]
    val = lesions.iloc[val_idx] if val_idx is not None else None
    clinical = [(None, None)] * 3
    n_clinical = 0
    if "clinical" in modalities:
        preprocessor, parts = _clinical_inputs(cohort, config, train, train, test, *([val] if val is not None else []))
        clinical = parts + [(None, None)] * (3 - len(parts))
        n_clinical = preprocessor.n_features_

    def dataset(index, frame, features):
        return LesionDataset(images, index, frame["y"].to_numpy(), modalities, *features)

    torch.manual_seed(seed)
    net = build_network(modalities, config.variant_model(variant), n_clinical)
    if len(modalities) > 1 and all((k, m) in single_branches for m in modalities) and config.model.init_from_single:
        for m in modalities:
            net.branches[m].load_state_dict(single_branches[(k, m)])
    work_dir = checkpoint_dir / variant / f"fold{k}-running" if checkpoint_dir is not None else None
    train_ds = dataset(train_idx, train, clinical[0])
    val_ds = dataset(val_idx, val, clinical[2]) if val is not None else None
    test_ds = dataset(test_idx, test, clinical[1])
    probs = fit_predict(net, train_ds, test_ds, training, seed=seed, val=val_ds,
                        work_dir=work_dir, on_epoch=on_epoch)
    # Calibration scores for thresholds, recalibration and conformal sets: the inner validation
    # split when there is one (unseen in fitting), else the training lesions themselves (in-sample).
    calib, calib_ds, source = (val, val_ds, "validation") if val is not None else (train, train_ds, "training")
    parts = [(test, probs, "test"), (calib, predict_probs(net, calib_ds), source)]
    used = [";".join(m for m in modalities if bool(
        test_ds.tensors["clinical_present"][i] if m == "clinical" else test_ds.tensors[f"{m}_views"][i].any()))
        for i in range(len(test_ds))]
    predictions = pd.concat([pd.DataFrame({
        "variant": variant, "fold": k, "split": split, "subject_id": frame["subject_id"].to_numpy(),
        "lesion_id": frame["lesion_id"].to_numpy(), "y": frame["y"].to_numpy(), "prob": p})
        for frame, p, split in parts], ignore_index=True)
    predictions["modalities_used"] = used + [""] * (len(predictions) - len(used))  # which inputs each test lesion had
    state = {n: t.detach().cpu().contiguous() for n, t in net.state_dict().items()}
    if checkpoint_dir is not None:
        save_file(state, str(checkpoint_dir / variant / f"fold{k}.safetensors"),
                  metadata={"variant": variant, "fold": str(k), "modalities": ",".join(modalities),
                            "n_clinical_features": str(n_clinical)})
        predictions.to_csv(checkpoint_dir / variant / f"fold{k}.csv", index=False)
        clear_work_dir(work_dir)
    return predictions, state

"""Cross-validate every variant (modality subset) on one shared set of subject-grouped folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from breastfusion.config import ExperimentConfig, TrainingConfig
from breastfusion.data.clinical import ClinicalPreprocessor
from breastfusion.data.manifest import IMAGE_MODALITIES, Cohort
from breastfusion.data.tensors import LesionDataset, build_lesion_images, clinical_features_for
from breastfusion.evaluation.splits import subject_folds
from breastfusion.models.network import build_network
from breastfusion.training.fit import fit_predict

__all__ = ["MissingModalityError", "check_modalities", "cross_validate"]


class MissingModalityError(ValueError):
    """A variant needs a modality the cohort does not have."""


def check_modalities(cohort: Cohort, config: ExperimentConfig) -> None:
    """Fail up front when a variant needs a modality that no subject has.

    Raises:
        MissingModalityError: naming the variant and the modality.
    """
    have = set(cohort.modalities)
    for name, modalities in config.variants.items():
        lacking = [m for m in modalities if m not in have]
        if lacking:
            raise MissingModalityError(f"variant {name!r} needs {lacking}, but the cohort at {cohort.root} has only "
                                       f"{sorted(have)}; drop the variant or add the data")


def _clinical_inputs(cohort: Cohort, config: ExperimentConfig, train: pd.DataFrame, test: pd.DataFrame):
    """Clinical features fitted on the training subjects only, then applied to both sides."""
    cfg = config.model.clinical
    train_rows = cohort.clinical[cohort.clinical["subject_id"].isin(train["subject_id"])]
    preprocessor = ClinicalPreprocessor(cfg.numeric, cfg.categorical, cfg.binary).fit(train_rows)
    return preprocessor, clinical_features_for(train, cohort.clinical, preprocessor), \
        clinical_features_for(test, cohort.clinical, preprocessor)


def cross_validate(cohort: Cohort, config: ExperimentConfig, *, progress: Progress | None = None) -> pd.DataFrame:
    """Train and predict every variant on every fold.

    Args:
        cohort: a validated cohort.
        config: the experiment (variants, model, training, cv).
        progress: a rich Progress to report decoding and training on.

    Returns:
        Out-of-fold predictions, one row per (variant, lesion): ``variant``,
        ``fold``, ``subject_id``, ``lesion_id``, ``y``, ``prob``.
    """
    check_modalities(cohort, config)
    lesions = cohort.lesions
    folds = subject_folds(lesions, n_splits=config.cv.n_splits, seed=config.cv.seed)
    used = {m for modalities in config.variants.values() for m in modalities}
    sizes = {m: getattr(config.model, m).image_size for m in IMAGE_MODALITIES if m in used}

    n_images = int(cohort.manifest["modality"].isin(list(sizes)).sum())
    decode_task = progress.add_task("decoding images", total=n_images) if progress else None
    images = build_lesion_images(cohort, sizes,
                                 on_image=(lambda: progress.advance(decode_task)) if progress else None)
    # Single-modality variants first, so multimodal ones can start from their branches.
    order = sorted(config.variants, key=lambda name: len(config.variants[name]) > 1)
    plans = {name: _training_plan(config, tuple(config.variants[name])) for name in order}
    total_epochs = len(folds) * sum(plan.epochs for plan in plans.values())
    train_task = progress.add_task("training", total=total_epochs) if progress else None

    single_branches: dict[tuple[int, str], dict] = {}  # (fold, modality) -> branch state
    rows = []
    for variant in order:
        modalities = tuple(config.variants[variant])
        for k, (train_idx, test_idx) in enumerate(folds):
            if progress:
                progress.update(train_task, description=f"training {variant} · fold {k + 1}/{len(folds)}")
            train, test = lesions.iloc[train_idx], lesions.iloc[test_idx]
            clinical_train = clinical_test = (None, None)
            n_clinical = 0
            if "clinical" in modalities:
                preprocessor, clinical_train, clinical_test = _clinical_inputs(cohort, config, train, test)
                n_clinical = preprocessor.n_features_
            train_ds = LesionDataset(images, train_idx, train["y"].to_numpy(), modalities, *clinical_train)
            test_ds = LesionDataset(images, test_idx, test["y"].to_numpy(), modalities, *clinical_test)
            seed = config.training.seed + 1000 * k
            torch.manual_seed(seed)
            net = build_network(modalities, config.model, n_clinical)
            training = config.training
            if len(modalities) > 1 and all((k, m) in single_branches for m in modalities) \
                    and config.model.init_from_single:
                for m in modalities:
                    net.branches[m].load_state_dict(single_branches[(k, m)])
                training = plans[variant]
            probs = fit_predict(net, train_ds, test_ds, training, seed=seed,
                                on_epoch=(lambda: progress.advance(train_task)) if progress else None)
            if len(modalities) == 1:
                single_branches[(k, modalities[0])] = {n: t.detach().clone()
                                                       for n, t in net.branches[modalities[0]].state_dict().items()}
            rows.append(pd.DataFrame({"variant": variant, "fold": k, "subject_id": test["subject_id"].to_numpy(),
                                      "lesion_id": test["lesion_id"].to_numpy(), "y": test["y"].to_numpy(),
                                      "prob": probs}))
    predictions = pd.concat(rows, ignore_index=True)
    # Report variants in the config's order.
    predictions["variant"] = pd.Categorical(predictions["variant"], categories=list(config.variants), ordered=True)
    return predictions.sort_values(["variant", "fold"], kind="stable").astype({"variant": str}).reset_index(drop=True)


def _training_plan(config: ExperimentConfig, modalities: tuple[str, ...]) -> TrainingConfig:
    """The training settings of a variant: a short fine-tune when it starts from single-modality branches."""
    singles = {tuple(m) for m in config.variants.values() if len(m) == 1}
    if len(modalities) > 1 and config.model.init_from_single and all((m,) in singles for m in modalities):
        t = config.training
        return t.model_copy(update={"epochs": t.finetune_epochs, "lr": t.lr * t.finetune_lr_scale})
    return config.training

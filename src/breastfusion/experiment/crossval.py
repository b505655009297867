"""Cross-validate every variant on one shared set of subject-grouped folds, sharing work between variants.

A variant is a stage-1 network (a modality subset, a model, a training plan)
and optionally a stage-2 learner on that network's deep features. Work is
shared wherever the maths allows, so a variant's numbers are the same whether
it runs alone or in a grid:

* a network is identified by everything that decides its weights (see
  :class:`NetworkSpec`); variants that need the same network (a stacking
  ensemble and its single learners, a modality subset and the branch it
  initialises) get the one trained copy;
* a multimodal variant starts its branches from single-modality networks with
  the same branch settings, trained on the same fold (MPM-MU's stage 1), which
  are trained on demand when no variant lists them;
* deep features are extracted once per (network, fold) for every stage-2 learner;
* images are decoded once per run (and kept in the on-disk cache across runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn

from breastfusion.config import ExperimentConfig, LocaliserConfig, ModelConfig, TrainingConfig
from breastfusion.data.cache import ArrayCache, CohortImages
from breastfusion.data.clinical_features import ClinicalPreprocessor
from breastfusion.data.manifest import IMAGE_MODALITIES, Cohort
from breastfusion.data.preprocess import Params, params_for
from breastfusion.data.tensors import (LesionDataset, LesionImages, clinical_features_for,
                                       modalities_used)
from breastfusion.evaluation.splits import official_split, subject_folds, training_only
from breastfusion.experiment.localisation import (CROP_PLAN, crop_to_predicted, cross_fit_parts, fit_fold_localiser,
                                                  load_localiser, localiser_frames, localiser_tag,
                                                  predicted_roi_modalities, require_masks, run_images,
                                                  save_localiser)
from breastfusion.experiment.run_folder import CheckpointLayout, fold_tag, save_skops
from breastfusion.models.network import SeedEnsemble, build_network, member_seed
from breastfusion.models.score_fusion import average_scores, fit_clinical_model
from breastfusion.models.stage2 import (FeatureTable, Stage2Ensemble, feature_table, group_permutation_importance,
                                        inner_splitter)
from breastfusion.training.fit import EpochEnd, clear_work_dir, extract_features, fit_predict, predict_probs

__all__ = ["CrossValidation", "MissingModalityError", "NetworkSpec", "network_spec", "check_modalities",
           "cross_validate", "FoldTrainer", "inner_split", "unique_networks", "preprocessing_params", "fold_seed",
           "FoldPositions", "fold_positions", "seeded_folds", "fit_clinical_preprocessor"]

_RUNTIME_KEYS = {"accelerator", "devices", "num_nodes", "strategy", "num_workers"}  # where it runs, not what it learns


@dataclass
class CrossValidation:
    """What :func:`cross_validate` produced.

    Attributes:
        predictions: out-of-fold predictions, one row per (variant, repeat, lesion): ``variant``, ``repeat``,
            ``fold``, ``subject_id``, ``lesion_id``, ``y``, ``prob``, ``modalities_used``, in the config's
            variant order.
        calibration: each fold's calibration scores (its inner validation lesions, or its training
            lesions when there is no validation split: in-sample for a network, out-of-inner-fold for a
            stage-2 learner; ``split`` says which). Thresholds, recalibration and conformal sets are fitted
            on these only.
        preprocessing: per-modality preprocessing parameters used.
        excluded_images: unreadable images left out (only with ``exclude_unreadable``).
        networks: ``{variant: network key}``; variants with the same key share one trained network.
        stage2_importance: per (variant, repeat, fold, feature group) the test-fold AUC lost when that
            group's features are permuted together (stage-2 variants only).
        localiser_boxes: with ``preprocess.roi: predicted``, the box each fold's localiser gave each of its
            held-out images (``modality``, ``repeat``, ``fold``, ``path``, ``lesion_id``, the box, and ``iou`` with
            the reader's mask box); empty otherwise.
    """

    predictions: pd.DataFrame
    calibration: pd.DataFrame
    preprocessing: dict[str, dict]
    excluded_images: list[str]
    networks: dict[str, str] = field(default_factory=dict)
    stage2_importance: pd.DataFrame = field(default_factory=pd.DataFrame)
    localiser_boxes: pd.DataFrame = field(default_factory=pd.DataFrame)


class MissingModalityError(ValueError):
    """A variant needs a modality the cohort does not have."""


def _key_exclusions(branch: Any) -> dict | set:
    """Branch settings left out of a network's key when at the values they had before they existed, so networks
    trained then keep their keys: no localiser, or a localiser's reader-mask fitting crops."""
    localiser = getattr(branch, "localiser", None)
    if localiser is None:
        return {"localiser"}
    if localiser.fit_crops == "reader":
        return {"localiser": dict.fromkeys(CROP_PLAN, True)}
    return set()


#: Training settings added after networks had been trained: left out of a network's key at these values (the
#: behaviour before they existed), so finished runs keep their keys.
_LATER_TRAINING_DEFAULTS = {"seeds": 1, "augment_zoom": 0.1, "augment_rotation": 10.0, "augment_shift": 0.08,
                            "mixup": 0.0, "ema_epochs": 0.0}


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that decides a stage-1 network's weights on a given fold.

    Attributes:
        modalities: its inputs.
        model: the model settings (only the parts its modalities use enter the key).
        training: the training plan (epochs, lr, ...).
        init: single-modality networks its branches start from (empty: from the encoder's initial weights).
    """

    modalities: tuple[str, ...]
    model: ModelConfig
    training: TrainingConfig
    init: tuple["NetworkSpec", ...] = ()

    @property
    def key(self) -> str:
        """A short hash of the settings that decide the weights (the same for equal networks)."""
        m = self.model
        material = {
            "modalities": list(self.modalities),
            "branches": {x: getattr(m, x).model_dump(mode="json", exclude=_key_exclusions(getattr(m, x)))
                         for x in self.modalities},
            "fusion": m.fusion, "dropout": m.dropout,
            "fusion_hidden": m.fusion_hidden if m.fusion == "gated" else None,
            "null_slot": True if m.fusion == "gated" and m.fusion_null_slot else None,
            "late_weights": m.late_weights if m.fusion == "late" else None,
            "training": self.training.model_dump(mode="json", exclude=_RUNTIME_KEYS | {
                k for k, default in _LATER_TRAINING_DEFAULTS.items() if getattr(self.training, k) == default}),
            "init": [s.key for s in self.init],
        }
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """A JSON-ready description (written beside the checkpoints)."""
        return {"modalities": list(self.modalities), "fusion": self.model.fusion,
                "branches": {x: getattr(self.model, x).model_dump(mode="json") for x in self.modalities},
                "training": self.training.model_dump(mode="json"), "init": [s.key for s in self.init]}


def network_spec(config: ExperimentConfig, variant: str) -> NetworkSpec:
    """The stage-1 network of ``variant``.

    A multimodal variant with ``model.init_from_single`` starts each branch from a
    single-modality network with the same branch settings and a linear (concat) head,
    trained with the base training plan, then fine-tunes for ``training.finetune_epochs``
    at ``finetune_lr_scale`` × the learning rate.
    """
    modalities = config.modalities(variant)
    model = config.variant_model(variant)
    training = config.training
    if model.fusion == "score":
        # Score-level fusion trains no network of its own: its image part is the image modalities' network.
        images = tuple(m for m in modalities if m != "clinical")
        if not images or "clinical" not in modalities:
            raise ValueError(f"variant {variant!r}: fusion 'score' averages an image network with a clinical "
                             f"learner, so it needs clinical and an image modality; got {list(modalities)}")
        model = model.model_copy(update={"fusion": "concat"})
        modalities = images
    if len(modalities) > 1 and model.init_from_single:
        single_model = model.model_copy(update={"fusion": "concat"})
        init = tuple(NetworkSpec((m,), single_model, training) for m in modalities)
        finetune = training.model_copy(update={"epochs": training.finetune_epochs,
                                               "lr": training.lr * training.finetune_lr_scale})
        return NetworkSpec(modalities, model, finetune, init)
    return NetworkSpec(modalities, model, training)


def check_modalities(cohort: Cohort, config: ExperimentConfig) -> None:
    """Fail up front when a variant needs a modality that no subject has.

    Raises:
        MissingModalityError: naming the variant and the modality.
    """
    have = set(cohort.modalities)
    for name in config.variants:
        lacking = [m for m in config.modalities(name) if m not in have]
        if lacking:
            raise MissingModalityError(f"variant {name!r} needs {lacking}, but the cohort at {cohort.root} has only "
                                       f"{sorted(have)}; drop the variant or add the data")


def preprocessing_params(config: ExperimentConfig, modalities: list[str]) -> dict[str, Params]:
    """Each image modality's preprocessing: its defaults, the branch's image size, then the config's overrides.

    Raises:
        ValueError: a variant changes a modality's image size or preprocessing (images are prepared once per run).
    """
    out = {}
    for m in modalities:
        branch = getattr(config.model, m)
        for name in config.variants:
            other = getattr(config.variant_model(name), m)
            if ((other.image_size, other.preprocess, other.localiser)
                    != (branch.image_size, branch.preprocess, branch.localiser)):
                raise ValueError(f"variant {name!r} changes model.{m}.image_size/preprocess/localiser; images are "
                                 "prepared once per run, so set them in the top-level model")
        out[m] = params_for(m, **{"size": branch.image_size, **branch.preprocess})
    return out


def mask_supervised(config: ExperimentConfig, modalities: list[str]) -> tuple[str, ...]:
    """The image modalities some variant trains with an auxiliary mask loss (``model.{modality}.mask_loss`` > 0)."""
    return tuple(m for m in modalities
                 if any(getattr(config.variant_model(name), m).mask_loss > 0 for name in config.variants))


def inner_split(lesions: pd.DataFrame, train_idx: np.ndarray, *, fraction: float, seed: int):
    """Split a fold's training positions into (fit, validation), grouped by subject and stratified."""
    n_splits = max(2, round(1 / fraction))
    fit, val = subject_folds(lesions.iloc[train_idx], n_splits=n_splits, seed=seed)[0]
    return train_idx[fit], train_idx[val]


@dataclass(frozen=True)
class FoldPositions:
    """Positions into ``cohort.lesions`` of one fold: what its networks fit on, validate on and predict."""

    fit: np.ndarray
    test: np.ndarray
    validation: np.ndarray | None = None

    @property
    def train(self) -> np.ndarray:
        """Every training-side position (fit + validation)."""
        return self.fit if self.validation is None else np.sort(np.concatenate([self.fit, self.validation]))


def fold_positions(cohort: Cohort, config: ExperimentConfig,
                   folds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> list[list[FoldPositions]]:
    """Every repeat's folds: the one place that turns the config into (fit, validation, test) positions.

    ``cv.split_column`` gives one fold, the dataset's own split (its validation part, if any, is the
    validation split); otherwise the seeded subject-grouped folds of each repeat (or the explicit ``folds``),
    each with an inner validation split of ``training.val_fraction`` of its training subjects.
    """
    lesions = cohort.lesions
    if config.cv.split_column is not None:
        if folds is not None:
            raise ValueError("explicit folds and cv.split_column both choose the test set; give one")
        if config.cv.training_only_column is not None:
            raise ValueError("cv.split_column and cv.training_only_column: mark the pooled cohort's rows as the "
                             "split's train part instead")
        train, val, test = official_split(cohort.manifest, lesions, config.cv.split_column)
        return [[FoldPositions(train, test, val)]]
    if folds is not None and config.cv.repeats != 1:
        raise ValueError("explicit folds are one cross-validation; set cv.repeats to 1")
    repeats = [folds] if folds is not None else [
        seeded_folds(cohort, config, config.cv.seed + r) for r in range(config.cv.repeats)]
    out = []
    for r, split in enumerate(repeats):
        row = []
        for k, (train, test) in enumerate(split):
            val = None
            if config.training.val_fraction > 0:
                train, val = inner_split(lesions, train, fraction=config.training.val_fraction,
                                         seed=fold_seed(config, k, r))
            row.append(FoldPositions(train, test, val))
        out.append(row)
    return out


def seeded_folds(cohort: Cohort, config: ExperimentConfig, seed: int, n_splits: int | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The seeded subject-grouped folds (``n_splits``, default ``cv.n_splits``) as positions into
    ``cohort.lesions``; with ``cv.training_only_column``, the folds of the ordinary lesions alone (the same folds
    as that cohort without the pooled one), every training-only lesion added to each training set."""
    lesions = cohort.lesions
    n_splits = config.cv.n_splits if n_splits is None else n_splits
    if config.cv.training_only_column is None:
        return subject_folds(lesions, n_splits=n_splits, seed=seed)
    pooled = training_only(cohort.manifest, lesions, config.cv.training_only_column)
    own, extra = np.flatnonzero(~pooled), np.flatnonzero(pooled)
    return [(np.sort(np.concatenate([own[train], extra])), own[test])
            for train, test in subject_folds(lesions.iloc[own].reset_index(drop=True), n_splits=n_splits,
                                             seed=seed)]


def fold_seed(config: ExperimentConfig, fold: int, repeat: int = 0) -> int:
    """The training seed of one fold of one repeat (repeat 0 keeps the seeds of a single cross-validation)."""
    return config.training.seed + 1000 * fold + 100_000 * repeat


def fit_clinical_preprocessor(lesions: pd.DataFrame, clinical: pd.DataFrame, config: ExperimentConfig,
                              fit_positions: np.ndarray) -> ClinicalPreprocessor:
    """The clinical preprocessor of one fold: ``model.clinical``'s columns, fitted on the clinical rows of the
    subjects the fold's networks are fitted on (``lesions`` at ``fit_positions``), never on its test subjects.

    The one place a fold's preprocessor is fitted: the cross-validation driver saves it in the run folder
    (:meth:`~breastfusion.experiment.run_folder.CheckpointLayout.clinical_preprocessor`); readers of runs made
    before it was saved refit it here from the cohort.
    """
    cfg = config.model.clinical
    subjects = lesions.iloc[fit_positions]["subject_id"]
    rows = clinical[clinical["subject_id"].isin(subjects)]
    return ClinicalPreprocessor(cfg.numeric, cfg.categorical, cfg.binary).fit(rows)


@dataclass
class _Fold:
    """One fold of one repeat: its positions and datasets (shared by every network of the fold)."""

    repeat: int
    k: int
    fit_idx: np.ndarray
    test_idx: np.ndarray
    val_idx: np.ndarray | None
    clinical: dict[str, tuple] = field(default_factory=dict)  # split -> (features, present)
    n_clinical: int = 0
    preprocessor: ClinicalPreprocessor | None = None  # fitted on fit_idx's subjects, when a variant reads clinical
    images: LesionImages | None = None  # the run's images with held-out ones cropped to a localiser's box
    boxes: list[pd.DataFrame] = field(default_factory=list)  # those boxes (localisation.crop_to_predicted)

    @property
    def tag(self) -> str:
        return fold_tag(self.k, self.repeat)


@dataclass
class _Trained:
    state: dict[str, torch.Tensor]
    rows: pd.DataFrame  # split, lesion predictions of the network's own head
    features: dict[str, dict[str, np.ndarray]] | None = None  # split -> block -> array
    ensemble: Stage2Ensemble | None = None  # every stage-2 learner, fitted once


class FoldTrainer:
    """Trains each (network, fold) once, on demand, and keeps what variants share."""

    def __init__(self, cohort: Cohort, config: ExperimentConfig, images: LesionImages,
                 checkpoint_dir: Path | None, on_epoch: Callable[[EpochEnd], None] | None, *,
                 localisation: dict[str, tuple[CohortImages, Params]] | None = None,
                 on_localiser_epoch: Callable[[int, int, float], None] | None = None):
        self.cohort, self.config, self.images = cohort, config, images
        # roi: predicted modality -> (the localiser's frames and masks, the modality's roi: predicted preprocessing)
        self.localisation = localisation or {}
        self.on_localiser_epoch = on_localiser_epoch
        self.lesions = cohort.lesions
        self.checkpoint_dir = checkpoint_dir
        self.layout = CheckpointLayout(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_epoch = on_epoch
        self.trained: dict[tuple[str, int, int], _Trained] = {}

    # -- data -------------------------------------------------------------------------------------------------
    def fold(self, repeat: int, k: int, positions: FoldPositions) -> _Fold:
        fold = _Fold(repeat, k, positions.fit, positions.test, positions.validation)
        if "clinical" in self.cohort.modalities and any("clinical" in self.config.modalities(v)
                                                        for v in self.config.variants):
            pre = fit_clinical_preprocessor(self.lesions, self.cohort.clinical, self.config, positions.fit)
            fold.preprocessor, fold.n_clinical = pre, pre.n_features_
            for split, idx in self._splits(fold).items():
                fold.clinical[split] = clinical_features_for(self.lesions.iloc[idx], self.cohort.clinical, pre)
        for modality, (frames, params) in self.localisation.items():
            self._localise(fold, modality, frames, params)
        return fold

    def _localise(self, fold: _Fold, modality: str, frames: CohortImages, params: Params) -> None:
        """Fit (or reload) the fold's lesion localiser on its fitting images' masks and crop the fold's held-out
        (test and validation) ``modality`` images to its boxes; with ``fit_crops: cross_fitted``, crop each part of
        the fitting images to the box of a localiser fitted on the other parts
        (:mod:`breastfusion.experiment.localisation`)."""
        cfg = getattr(self.config.model, modality).localiser
        seed = fold_seed(self.config, fold.k, fold.repeat)
        model = self._fold_localiser(fold, modality, frames, cfg, fold.fit_idx, seed=seed)
        held_out = np.concatenate([fold.test_idx] + ([fold.val_idx] if fold.val_idx is not None else []))
        fold.images, boxes = crop_to_predicted(fold.images or self.images, self.cohort, modality,
                                               params, [model], cfg, held_out)
        test_lesions = set(self.lesions["lesion_id"].iloc[fold.test_idx])
        boxes = [boxes.assign(split=np.where(boxes["lesion_id"].isin(test_lesions), "test", "validation"))]
        if cfg.fit_crops == "cross_fitted":
            for part, (others, own) in enumerate(cross_fit_parts(self.lesions, fold.fit_idx, cfg.cross_fit_folds,
                                                                 seed)):
                part_model = self._fold_localiser(fold, modality, frames, cfg, others, seed=seed + 1 + part,
                                                  part=part)
                fold.images, part_boxes = crop_to_predicted(fold.images, self.cohort, modality, params,
                                                            [part_model], cfg, own)
                boxes.append(part_boxes.assign(split="fit"))
        boxes = pd.concat(boxes, ignore_index=True).assign(modality=modality, repeat=fold.repeat, fold=fold.k)
        if self.layout is not None:
            boxes.to_csv(self.layout.localiser_boxes(modality, localiser_tag(cfg), fold.k, fold.repeat), index=False)
        fold.boxes.append(boxes)

    def _fold_localiser(self, fold: _Fold, modality: str, frames: CohortImages, cfg: LocaliserConfig,
                        positions: np.ndarray, *, seed: int, part: int | None = None) -> nn.Module:
        """A localiser fitted on the masks of the ``modality`` images at ``positions``, reloaded from the run's
        checkpoints when it was fitted before (``part``: a cross-fitted one, see :meth:`_localise`)."""
        path = (self.layout.localiser_weights(modality, localiser_tag(cfg), fold.k, fold.repeat, part)
                if self.layout else None)
        if path is not None and path.is_file():
            if self.on_localiser_epoch:
                for epoch in range(cfg.epochs):
                    self.on_localiser_epoch(epoch + 1, cfg.epochs, float("nan"))  # loaded, not trained
            return load_localiser(path, cfg)
        model = fit_fold_localiser(self.cohort, frames, positions, modality, cfg, seed=seed,
                                   on_epoch=self.on_localiser_epoch)
        if path is not None:
            save_localiser(path, model, cfg)
        return model

    @staticmethod
    def _splits(fold: _Fold) -> dict[str, np.ndarray]:
        out = {"fit": fold.fit_idx, "test": fold.test_idx}
        if fold.val_idx is not None:
            out["validation"] = fold.val_idx
        return out

    def dataset(self, fold: _Fold, split: str, modalities: tuple[str, ...]) -> LesionDataset:
        """Fold ``fold``'s ``split`` lesions; the fitting lesions carry their lesion masks when the run prepared
        any (mask supervision), the held-out and validation lesions never do."""
        idx = self._splits(fold)[split]
        features = fold.clinical.get(split, (None, None)) if "clinical" in modalities else (None, None)
        return LesionDataset(fold.images or self.images, idx, self.lesions.iloc[idx]["y"].to_numpy(), modalities,
                             *features, with_masks=split == "fit")

    # -- stage 1 ----------------------------------------------------------------------------------------------
    def network(self, spec: NetworkSpec, fold: _Fold) -> _Trained:
        """The trained network of ``spec`` on ``fold`` (trained, loaded from the checkpoint folder, or reused)."""
        slot = (spec.key, fold.repeat, fold.k)
        if slot not in self.trained:
            init = [self.network(s, fold) for s in spec.init]
            self.trained[slot] = self._load(spec, fold) or self._train(spec, fold, init)
        return self.trained[slot]

    def _paths(self, spec: NetworkSpec, fold: _Fold) -> tuple[Path, Path, Path] | None:
        if self.layout is None:
            return None
        args = spec.key, fold.k, fold.repeat
        return (self.layout.network_weights(*args), self.layout.network_predictions(*args),
                self.layout.network_work_dir(*args))

    def _load(self, spec: NetworkSpec, fold: _Fold) -> _Trained | None:
        paths = self._paths(spec, fold)
        if paths is None or not (paths[0].is_file() and paths[1].is_file()):
            return None
        if self.on_epoch:
            for _ in range(spec.training.seeds):
                for epoch in range(spec.training.epochs):
                    self.on_epoch(EpochEnd(epoch + 1, spec.training.epochs))  # loaded, not trained: no loss
        return _Trained(load_file(str(paths[0])), pd.read_csv(paths[1], dtype={"subject_id": str, "lesion_id": str}))

    def build(self, spec: NetworkSpec, fold: _Fold, state: dict[str, torch.Tensor] | None = None, *,
              seeds: int | None = None):
        """The network of ``spec`` on ``fold`` (a :class:`SeedEnsemble` when ``training.seeds > 1``, unless
        ``seeds`` says otherwise), with ``state`` loaded when given."""
        net = build_network(spec.modalities, spec.model, fold.n_clinical if "clinical" in spec.modalities else 0,
                            seeds=spec.training.seeds if seeds is None else seeds)
        if state is not None:
            net.load_state_dict(state)
        return net

    def _train(self, spec: NetworkSpec, fold: _Fold, init: list[_Trained]) -> _Trained:
        seed = fold_seed(self.config, fold.k, fold.repeat)
        n_members = spec.training.seeds
        paths = self._paths(spec, fold)
        datasets = {split: self.dataset(fold, split, spec.modalities) for split in self._splits(fold)}
        members = []
        for j in range(n_members):
            # Member j: initialised and trained from its own seed (member 0 is the single network seeds: 1 trains).
            torch.manual_seed(member_seed(seed, j))
            member = self.build(spec, fold, seeds=1)
            prefix = f"members.{j}." if n_members > 1 else ""
            for single, trained in zip(spec.init, init):
                (m,) = single.modalities
                start = f"{prefix}branches.{m}."
                member.branches[m].load_state_dict({n[len(start):]: t for n, t in trained.state.items()
                                                    if n.startswith(start)})
            work_dir = None if paths is None else (paths[2] / f"member{j}" if n_members > 1 else paths[2])
            # An ensemble predicts once, below, with the mean of its members' logits.
            probs = fit_predict(member, datasets["fit"], datasets["test"] if n_members == 1 else None, spec.training,
                                seed=member_seed(seed, j), val=datasets.get("validation"), work_dir=work_dir,
                                on_epoch=self.on_epoch)
            members.append(member)
        net = members[0] if n_members == 1 else SeedEnsemble(members)
        if n_members > 1:
            probs = predict_probs(net, datasets["test"], tta=spec.training.tta)
        # Calibration scores: the inner validation split when there is one (unseen in fitting), else the
        # training lesions themselves (in-sample).
        calib_split = "validation" if "validation" in datasets else "fit"
        frames = [self._rows(fold, "test", datasets["test"], probs, spec.modalities),
                  self._rows(fold, "validation" if calib_split == "validation" else "training",
                             datasets[calib_split], predict_probs(net, datasets[calib_split], tta=spec.training.tta),
                             spec.modalities,
                             idx=self._splits(fold)[calib_split])]
        rows = pd.concat(frames, ignore_index=True)
        state = {n: t.detach().cpu().contiguous() for n, t in net.state_dict().items()}
        if paths is not None:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            save_file(state, str(paths[0]), metadata={"modalities": ",".join(spec.modalities), "fold": str(fold.k),
                                                      "repeat": str(fold.repeat), "seeds": str(n_members),
                                                      "n_clinical_features": str(fold.n_clinical
                                                                                 if "clinical" in spec.modalities
                                                                                 else 0)})
            rows.to_csv(paths[1], index=False)
            self.layout.network_description(spec.key).write_text(json.dumps(spec.describe(), indent=2))
            clear_work_dir(paths[2])
        return _Trained(state, rows)

    def _rows(self, fold: _Fold, split: str, dataset: LesionDataset, probs: np.ndarray, modalities, *,
              idx: np.ndarray | None = None) -> pd.DataFrame:
        frame = self.lesions.iloc[fold.test_idx if idx is None else idx]
        used = modalities_used(dataset.tensors, modalities)
        return pd.DataFrame({"repeat": fold.repeat, "fold": fold.k, "split": split,
                             "subject_id": frame["subject_id"].to_numpy(), "lesion_id": frame["lesion_id"].to_numpy(),
                             "y": frame["y"].to_numpy(), "prob": probs, "modalities_used": used})

    def groups(self, idx: np.ndarray) -> np.ndarray:
        """The outer folds' grouping of these lesions (``Cohort.lesions``' ``group``: duplicate groups, else the
        subject); every inner split (stage 2, score fusion) groups by the same key, so no group straddles one."""
        return self.lesions["group"].to_numpy()[idx]

    # -- score-level fusion -------------------------------------------------------------------------------
    def score_fusion(self, spec: NetworkSpec, fold: _Fold) -> tuple[pd.DataFrame, object]:
        """The image network's rows with each probability averaged with the fold's clinical learner's
        (:mod:`breastfusion.models.score_fusion`); calibration rows get out-of-inner-fold clinical scores.

        Returns:
            (the rows, the fitted clinical learner: the estimator its inner search chose, refitted on the
            fold's training lesions)."""
        head = self.network(spec, fold).rows
        fit_idx = fold.fit_idx
        features, present = fold.clinical["fit"]
        y = self.lesions["y"].to_numpy()
        cfg = self.config.model.clinical
        search, oof = fit_clinical_model(cfg.score_model, features[present], y[fit_idx][present],
                                         self.groups(fit_idx)[present], seed=fold_seed(self.config, fold.k,
                                                                                         fold.repeat))
        model = search.best_estimator_
        out = []
        for split, rows in head.groupby("split", sort=False):
            rows = rows.copy()
            source = {"test": "test", "validation": "validation", "training": "fit"}[split]
            feats, have = fold.clinical[source]
            clinical = np.full(len(rows), np.nan)
            if split == "training":
                clinical[present] = oof
            elif have.any():
                clinical[have] = model.predict_proba(feats[have])[:, 1]
            image_present = rows["modalities_used"].astype(str) != ""
            rows["prob"] = average_scores(rows["prob"].to_numpy(), clinical, image_present=image_present.to_numpy(),
                                          clinical_present=have)
            used = rows["modalities_used"].fillna("").astype(str)
            rows["modalities_used"] = [(";".join(filter(None, [u, "clinical"])) if h else u)
                                       for u, h in zip(used, have)]
            out.append(rows)
        return pd.concat(out, ignore_index=True), model

    # -- stage 2 ----------------------------------------------------------------------------------------------
    def features(self, spec: NetworkSpec, fold: _Fold) -> dict[str, FeatureTable]:
        """Deep features of the fold's fit / test (/ validation) lesions, extracted once per (network, fold)."""
        trained = self.network(spec, fold)
        if trained.features is None:
            net = self.build(spec, fold, trained.state).eval()
            trained.features = {split: extract_features(net, self.dataset(fold, split, spec.modalities))
                                for split in self._splits(fold)}
        return {split: feature_table(blocks, spec.model.fusion, self.config.stage2.features)
                for split, blocks in trained.features.items()}

    def stage2(self, variant: str, spec: NetworkSpec, fold: _Fold, learner: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fit a stage-2 learner on the fold's training features; its test rows, calibration rows and
        per-feature-group importance."""
        cfg = self.config.stage2
        tables = self.features(spec, fold)
        trained = self.network(spec, fold)
        if trained.ensemble is None:
            # The inner splitter groups by the outer folds' key (cv_group, else subject): no group on both sides.
            y, groups = self.lesions["y"].to_numpy()[fold.fit_idx], self.groups(fold.fit_idx)
            trained.ensemble = Stage2Ensemble(cfg, tables["fit"].values, y, groups,
                                              cv=inner_splitter(y, groups, cfg.inner_folds, cfg.seed))
        ensemble, head = trained.ensemble, trained.rows
        model = ensemble.model(learner)
        test = head[head["split"] == "test"].copy()
        test["prob"] = ensemble.predict(learner, tables["test"].values)
        if "validation" in tables:
            calib = head[head["split"] == "validation"].copy()
            calib["prob"] = ensemble.predict(learner, tables["validation"].values)
        else:
            calib = head[head["split"] == "training"].copy()
            calib["prob"] = ensemble.calibration(learner)
            calib["split"] = "training-inner-cv"
        importance = pd.DataFrame()
        y_test = test["y"].to_numpy()
        if len(np.unique(y_test)) == 2:
            importance = group_permutation_importance(model, tables["test"], y_test, seed=cfg.seed).assign(
                variant=variant, repeat=fold.repeat, fold=fold.k)
        return pd.concat([test, calib], ignore_index=True), importance


def cross_validate(cohort: Cohort, config: ExperimentConfig, *, progress: Progress | None = None,
                   checkpoint_dir: Path | None = None,
                   folds: list[tuple[np.ndarray, np.ndarray]] | None = None) -> CrossValidation:
    """Train and predict every variant on every fold of every repeat.

    With ``checkpoint_dir``, each trained (network, fold) leaves
    ``networks/{key}/fold{k}.safetensors`` (weights only) and ``.csv`` (its predictions), each
    variant ``{variant}/fold{k}.safetensors`` (a link to its network), and each running fold a
    checkpoint per epoch (the layout is :class:`~breastfusion.experiment.run_folder.CheckpointLayout`):
    calling again with the same folder skips finished networks and resumes an
    interrupted one from its last epoch, giving the same numbers as an uninterrupted run.

    Args:
        cohort: a validated cohort.
        config: the experiment (variants, model, training, stage2, cv).
        progress: a rich Progress to report decoding and training on.
        checkpoint_dir: the run's checkpoint folder (``None``: keep nothing).
        folds: (train, test) positions into ``cohort.lesions`` to use instead of the seeded splitter
            (one repeat only).

    Returns:
        The out-of-fold predictions, each fold's calibration scores, and how images were prepared.
    """
    check_modalities(cohort, config)
    layout = CheckpointLayout(checkpoint_dir) if checkpoint_dir is not None else None
    repeats = fold_positions(cohort, config, folds)
    used = {m for name in config.variants for m in config.modalities(name)}
    params = preprocessing_params(config, [m for m in IMAGE_MODALITIES if m in used])
    predicted = predicted_roi_modalities(params)
    if predicted and config.execution.executor != "local":
        raise ValueError(f"preprocess.roi: predicted ({', '.join(predicted)}) fits a lesion localiser per fold in "
                         f"this process; execution.executor {config.execution.executor!r} does not run it yet: use "
                         "executor: local")
    for modality in predicted:
        require_masks(cohort, modality)
    n_images = int(cohort.manifest["modality"].isin(list(params)).sum())
    # a localised modality's images are prepared again for the localiser's whole frame (and the branch's, with
    # views: crop_and_frame)
    for m in predicted:
        n_images += int((cohort.manifest["modality"] == m).sum()) * (
            2 if getattr(config.model, m).localiser.views == "crop_and_frame" else 1)
    decode_task = progress.add_task("decoding + preprocessing images", total=n_images) if progress else None
    advance = (lambda: progress.advance(decode_task)) if progress else None
    cache = ArrayCache(enabled=config.cache)
    # roi: predicted fits on reader-mask crops; each fold's held-out images are re-cropped to its localiser's box.
    images = run_images(cohort, params, config.model, cache=cache, exclude_unreadable=config.exclude_unreadable,
                        on_image=advance, masks_for=mask_supervised(config, list(params)))
    localisation = {m: (localiser_frames(cohort, m, getattr(config.model, m).localiser, cache=cache,
                                         exclude_unreadable=config.exclude_unreadable, on_image=advance), params[m])
                    for m in predicted}
    for modality, slots in images.mask_views.items():
        if not bool(slots.any()):
            warnings.warn(f"model.{modality}.mask_loss > 0, but no {modality} image of the cohort has a lesion mask "
                          "(manifest column mask_path): the mask head learns nothing", stacklevel=2)
    order = sorted(config.variants, key=lambda name: len(config.modalities(name)) > 1)
    specs = {name: network_spec(config, name) for name in order}
    total_epochs = sum(len(f) for f in repeats) * sum(s.training.epochs * s.training.seeds
                                                           for s in unique_networks(specs.values()))
    if config.execution.executor != "local":  # train every network elsewhere first; the pass below loads them
        from breastfusion.execution import run_trainings

        remote_task = progress.add_task(f"training on {config.execution.executor}", total=None) if progress else None
        run_trainings(cohort, config, images, repeats, unique_networks(specs.values()), checkpoint_dir,
                      on_done=(lambda _: progress.advance(remote_task)) if progress else None)
    localiser_task = progress.add_task("lesion localisers", total=sum(len(f) for f in repeats) * sum(
        getattr(config.model, m).localiser.epochs * getattr(config.model, m).localiser.fits_per_fold
        for m in predicted)) if progress and predicted else None
    train_task = progress.add_task("training", total=total_epochs) if progress else None
    # Each epoch advances the bar and shows its network's epoch and mean training loss (PlainProgress prints
    # them on its lines; rich keeps them as task fields).
    runner = FoldTrainer(cohort, config, images, checkpoint_dir,
                         (lambda end: progress.update(train_task, advance=1, epoch=f"{end.epoch}/{end.epochs}",
                                                      loss=end.train_loss)) if progress else None,
                         localisation=localisation,
                         on_localiser_epoch=(lambda e, n, loss: progress.update(
                             localiser_task, advance=1, epoch=f"{e}/{n}", loss=loss)) if localiser_task is not None
                         else None)

    rows, importance, boxes = [], [], []
    for r, split in enumerate(repeats):
        for k, positions in enumerate(split):
            fold = runner.fold(r, k, positions)
            boxes.extend(fold.boxes)
            if layout is not None and fold.preprocessor is not None:  # for bundles and reloads: fitted once, here
                save_skops(layout.clinical_preprocessor(k, r), fold.preprocessor)
            for variant in order:
                if progress:
                    step = f" · repeat {r + 1}/{len(repeats)}" if len(repeats) > 1 else ""
                    progress.update(train_task, description=f"{variant} · fold {k + 1}/{len(split)}{step}",
                                    epoch=None, loss=None)  # the last network's: not this one's
                spec, learner = specs[variant], config.variant(variant).stage2
                trained = runner.network(spec, fold)
                if config.variant_model(variant).fusion == "score":
                    out, clinical_model = runner.score_fusion(spec, fold)
                    if layout is not None and r == 0:
                        save_skops(layout.learner(variant, k, "score"), clinical_model)
                elif learner == "none":
                    out = trained.rows
                else:
                    out, imp = runner.stage2(variant, spec, fold, learner)
                    importance.append(imp)
                    if layout is not None and r == 0:
                        save_skops(layout.learner(variant, k, "stage2"),
                                   runner.network(spec, fold).ensemble.model(learner))
                rows.append(out.assign(variant=variant))
                if layout is not None and r == 0:
                    _link_variant(layout, variant, spec, fold)
    every = pd.concat(rows, ignore_index=True)
    columns = ["variant", "repeat", "fold", "subject_id", "lesion_id", "y", "prob", "modalities_used"]
    predictions = every[every["split"] == "test"][columns].copy()
    predictions["variant"] = pd.Categorical(predictions["variant"], categories=list(config.variants), ordered=True)
    predictions = predictions.sort_values(["variant", "repeat", "fold"], kind="stable").astype({"variant": str})
    calibration = every[every["split"] != "test"][columns[:-1] + ["split"]]
    networks = {name: spec.key for name, spec in specs.items()}
    if layout is not None:
        layout.variants.write_text(json.dumps(
            {name: {"network": networks[name], "modalities": list(config.modalities(name)),
                    "stage2": config.variant(name).stage2} for name in config.variants}, indent=2))
    return CrossValidation(predictions=predictions.reset_index(drop=True),
                           calibration=calibration.reset_index(drop=True),
                           preprocessing=images.params, excluded_images=images.excluded, networks=networks,
                           stage2_importance=pd.concat(importance, ignore_index=True) if importance
                           else pd.DataFrame(),
                           localiser_boxes=pd.concat(boxes, ignore_index=True) if boxes else pd.DataFrame())


def unique_networks(specs) -> list[NetworkSpec]:
    """Every network the specs need, dependencies included, once each."""
    seen: dict[str, NetworkSpec] = {}

    def visit(spec: NetworkSpec) -> None:
        for dep in spec.init:
            visit(dep)
        seen.setdefault(spec.key, spec)

    for spec in specs:
        visit(spec)
    return list(seen.values())


def _link_variant(layout: CheckpointLayout, variant: str, spec: NetworkSpec, fold: _Fold) -> None:
    """The variant's fold network (repeat 0) → its network's weights, as a hard link (a copy where links fail)."""
    source = layout.network_weights(spec.key, fold.k, fold.repeat)
    target = layout.variant_weights(variant, fold.k)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())

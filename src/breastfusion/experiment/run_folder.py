"""The layout of a run folder: the one module that knows where each file of a run lives.

A run folder (``breastfusion run``, ``demo``, ``ablate``) holds:

* ``config.yaml``       the resolved configuration (every key, defaults included);
* ``preprocessing.json`` per-modality preprocessing parameters and any unreadable images left out;
* ``predictions.csv``   out-of-fold predictions: variant, fold, subject, lesion, label, probability;
* ``calibration_predictions.csv`` each fold's calibration scores (inner validation, or training in-sample);
* ``results.json``      every number in the report, under keys that say what they are;
* ``roc.png`` and the report's other figures, ``report.html``;
* ``ablation.csv``, ``ablation.md`` (``ablate``); ``nested_selection.json`` (``ablate --nested-inner-folds``);
* ``ensemble.json``     an ensemble of runs (``breastfusion ensemble``): its member runs; it has no ``checkpoints/``;
* ``cohort/``           the generated cohort of a synthetic run (``demo``);
* ``explain/``          what ``breastfusion explain`` writes by default;
* ``checkpoints/``      laid out by :class:`CheckpointLayout`: each fold's network
  ``networks/{key}/{tag}.safetensors`` (weights only) with its predictions ``{tag}.csv`` and its
  settings ``network.json``; per variant ``{variant}/fold{k}.safetensors`` (a link to its network) and
  its fitted scikit-learn learners ``{variant}/fold{k}.stage2.skops`` / ``.score.skops``; each fold's
  fitted clinical preprocessor ``clinical/{tag}.skops``; ``variants.json`` maps each variant to its network.

``{tag}`` is :func:`fold_tag`: ``fold{k}`` in a single cross-validation, ``repeat{r}-fold{k}`` in repeat ``r``.
Every reader and writer of a run folder asks :class:`RunLayout` for a path instead of spelling a file name,
so the layout changes in one place. Imports nothing heavy (the command line's checks use it).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["RUN_FILES", "FIGURES", "RunLayout", "CheckpointLayout", "fold_tag", "missing_run_file", "save_skops"]

#: Files every run folder has (``breastfusion run``, ``demo`` and ``ablate`` write them).
RUN_FILES = ("config.yaml", "results.json", "predictions.csv")

#: The report's figures: name -> file in the run folder.
FIGURES = {"roc": "roc.png", "calibration": "calibration.png", "decision_curves": "decision_curves.png",
           "confusion_matrices": "confusion_matrices.png"}

#: The kinds of fitted scikit-learn learner a variant's fold may have.
LearnerKind = Literal["stage2", "score"]


def fold_tag(fold: int, repeat: int = 0) -> str:
    """The file tag of fold ``fold`` of repeat ``repeat``: ``fold2``, or ``repeat1-fold2`` after repeat 0."""
    return f"fold{fold}" if repeat == 0 else f"repeat{repeat}-fold{fold}"


@dataclass(frozen=True)
class CheckpointLayout:
    """Where the trained parts of a run live, inside its ``checkpoints/`` folder (or any checkpoint folder)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def variants(self) -> Path:
        """``variants.json``: each variant's network key, modalities and stage-2 learner."""
        return self.root / "variants.json"

    def network_dir(self, key: str) -> Path:
        """The folder of one network (:attr:`~breastfusion.experiment.crossval.NetworkSpec.key`), every fold."""
        return self.root / "networks" / key

    def network_weights(self, key: str, fold: int, repeat: int = 0) -> Path:
        """A network's weights on one fold (safetensors, weights only)."""
        return self.network_dir(key) / f"{fold_tag(fold, repeat)}.safetensors"

    def network_predictions(self, key: str, fold: int, repeat: int = 0) -> Path:
        """A network's own predictions on one fold's splits (written with its weights)."""
        return self.network_dir(key) / f"{fold_tag(fold, repeat)}.csv"

    def network_work_dir(self, key: str, fold: int, repeat: int = 0) -> Path:
        """Where a network's training on one fold keeps its per-epoch checkpoint while it runs (for resuming)."""
        return self.network_dir(key) / f"{fold_tag(fold, repeat)}-running"

    def network_description(self, key: str) -> Path:
        """``network.json``: the settings that decide the network's weights."""
        return self.network_dir(key) / "network.json"

    def variant_dir(self, variant: str) -> Path:
        """The folder of one variant's per-fold files."""
        return self.root / variant

    def variant_weights(self, variant: str, fold: int) -> Path:
        """Fold ``fold``'s network of ``variant`` (repeat 0; a link to its network's weights)."""
        return self.variant_dir(variant) / f"{fold_tag(fold)}.safetensors"

    def learner(self, variant: str, fold: int, kind: LearnerKind) -> Path:
        """Fold ``fold``'s fitted scikit-learn learner of ``variant`` (repeat 0): ``stage2`` (a stage-2
        learner on deep features) or ``score`` (score-level fusion's clinical learner)."""
        return self.variant_dir(variant) / f"{fold_tag(fold)}.{kind}.skops"

    def localiser_dir(self, modality: str, tag: str) -> Path:
        """The fold localisers of a ``modality`` with the settings of ``tag`` (and their boxes)."""
        return self.root / "localisers" / f"{modality}-{tag}"

    def localiser_weights(self, modality: str, tag: str, fold: int, repeat: int = 0, part: int | None = None) -> Path:
        """A fold's lesion localiser (``preprocess.roi: predicted``; safetensors), filed under its settings' tag;
        ``part``: the localiser that crops that part of the fold's fitting images (``fit_crops: cross_fitted``)."""
        suffix = "" if part is None else f".part{part}"
        return self.localiser_dir(modality, tag) / f"{fold_tag(fold, repeat)}{suffix}.safetensors"

    def localiser_boxes(self, modality: str, tag: str, fold: int, repeat: int = 0) -> Path:
        """The boxes a fold's localiser gave its held-out images, with their IoU against the reader's masks (csv)."""
        return self.localiser_dir(modality, tag) / f"{fold_tag(fold, repeat)}.boxes.csv"

    def clinical_preprocessor(self, fold: int, repeat: int = 0) -> Path:
        """Fold ``fold``'s fitted clinical preprocessor (skops), shared by every variant that reads clinical data."""
        return self.root / "clinical" / f"{fold_tag(fold, repeat)}.skops"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (nothing is read or checked when it is made)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration_predictions.csv"

    @property
    def localiser_boxes(self) -> Path:
        """``localiser_boxes.csv``: with ``preprocess.roi: predicted``, each held-out image's localiser box."""
        return self.root / "localiser_boxes.csv"

    @property
    def preprocessing(self) -> Path:
        return self.root / "preprocessing.json"

    def figure(self, name: str) -> Path:
        """One of the report's figures (a key of :data:`FIGURES`)."""
        return self.root / FIGURES[name]

    @property
    def roc(self) -> Path:
        return self.figure("roc")

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def ablation_csv(self) -> Path:
        return self.root / "ablation.csv"

    @property
    def ablation_md(self) -> Path:
        return self.root / "ablation.md"

    @property
    def nested_selection(self) -> Path:
        return self.root / "nested_selection.json"

    @property
    def ensemble(self) -> Path:
        """``ensemble.json`` of an ensemble of runs (``breastfusion ensemble``): its members; no networks of its own."""
        return self.root / "ensemble.json"

    @property
    def cohort(self) -> Path:
        """A synthetic run's generated cohort folder."""
        return self.root / "cohort"

    @property
    def explain(self) -> Path:
        """The default output folder of ``breastfusion explain``."""
        return self.root / "explain"

    @property
    def checkpoints(self) -> CheckpointLayout:
        return CheckpointLayout(self.root / "checkpoints")

    def missing_file(self) -> str | None:
        """``None`` when the folder holds every file of :data:`RUN_FILES`, else a message naming the first
        missing one."""
        for name in RUN_FILES:
            if not (self.root / name).is_file():
                return (f"{self.root} is not a run folder: {name} is missing "
                        "(make one with `breastfusion run` or `breastfusion demo`)")
        return None


def missing_run_file(root: str | Path) -> str | None:
    """``None`` when ``root`` holds every file of :data:`RUN_FILES`, else a message naming the first missing one."""
    return RunLayout(Path(root)).missing_file()


def save_skops(target: Path, obj: Any) -> None:
    """Write a fitted scikit-learn object (a learner, a clinical preprocessor) as skops, never pickle.

    Deflate-compressed: the forests of MPM-MU's stacking shrink about tenfold (26.5 MB → 2.7 MB a fold at the
    mpm_mu config's settings). Read back with the bundle's trusted-types rule
    (:func:`breastfusion.bundle.load_clinical_preprocessor` for preprocessors).
    """
    import skops.io

    target.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(obj, target, compression=zipfile.ZIP_DEFLATED)

"""Reload a run folder: its configuration, cohort, folds, fold networks and fold clinical preprocessors.

Everything that explains, audits or re-uses a finished run reads it through
:func:`load_run`, so the folds, the in-fold clinical preprocessing and the
image normalisation are rebuilt exactly as the run made them:

* the folds come from :func:`~breastfusion.experiment.crossval.fold_positions`, the function the run
  used (``cv.n_splits`` and ``cv.seed``, or the dataset's own ``cv.split_column``);
* fold ``k``'s clinical preprocessor is the one the run fitted and saved (on the subjects fold ``k``'s
  network was fitted on: its training subjects, less the inner validation subjects when early stopping
  held some out), read with the bundle's trusted-types rule; runs made before it was saved refit it from
  the cohort with :func:`~breastfusion.experiment.crossval.fit_clinical_preprocessor`, as the run did;
* fold ``k``'s network is the variant's fold checkpoint (:class:`~breastfusion.experiment.run_folder.RunLayout`);
* images go through the run's per-modality preprocessing (and cache), then
  the batch normalisation training used (:func:`~breastfusion.data.transforms.prepare_batch`);
* lesion masks (manifest column ``mask_path``) go through the same crop,
  flip and resize as their image, so they align with what the network saw.

The cohort is found at ``RUN/cohort`` (synthetic runs), else at the config's
``manifest``, else at ``results.json``'s ``cohort.root``; its manifest must
hash to the ``manifest_sha256`` the run recorded, or the folds would differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from breastfusion.config import ExperimentConfig, load_config
from breastfusion.data.cache import ArrayCache, read_mask as _read_mask, roi_inputs as _roi_inputs  # old local names
from breastfusion.data.clinical_features import ClinicalPreprocessor
from breastfusion.data.manifest import IMAGE_MODALITIES, MANIFEST_FILENAME, Cohort, load_cohort
from breastfusion.data.preprocess import Params, align_mask, preprocess
from breastfusion.data.readers import read_image
from breastfusion.data.synthetic.cohort import MASK_COLUMN
from breastfusion.data.transforms import prepare_batch
from breastfusion.data.tensors import LesionDataset, LesionImages, clinical_features_for
from breastfusion.experiment.crossval import (FoldPositions, fit_clinical_preprocessor, fold_positions, network_spec,
                                               preprocessing_params)
from breastfusion.experiment.localisation import (crop_to_predicted, load_localiser, localiser_tag,
                                                  predicted_roi_modalities, run_images)
from breastfusion.experiment.run_folder import RunLayout
from breastfusion.models.network import MultimodalNet, SeedEnsemble, build_network
from breastfusion.training.module import tta_logits

__all__ = ["RunFolderError", "RunArtifacts", "load_run", "refuse_ensemble", "load_network", "fold_checkpoint",
           "saved_preprocessor", "MASK_COLUMN"]

class RunFolderError(ValueError):
    """A run folder is incomplete or no longer matches its cohort; the message says what is missing."""


@dataclass
class RunArtifacts:
    """A reloaded run folder (build with :func:`load_run`).

    Attributes:
        root: the run folder.
        config: the resolved configuration the run wrote.
        cohort: the cohort it ran on.
        results: ``results.json``.
        predictions: ``predictions.csv`` (out-of-fold).
        lesions: one row per lesion, in the order the folds index.
        folds: (train positions, test positions) per fold, into ``lesions``.
        positions: per fold, the (fit, validation, test) positions the run used (:func:`fold_positions`).
    """

    root: Path
    config: ExperimentConfig
    cohort: Cohort
    results: dict[str, Any]
    predictions: pd.DataFrame
    lesions: pd.DataFrame
    folds: list[tuple[np.ndarray, np.ndarray]]
    positions: list[FoldPositions] | None = None
    _preprocessors: dict[int, ClinicalPreprocessor] = field(default_factory=dict, repr=False)
    _localisers: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.positions is None:  # built by hand from (train, test) pairs: no inner validation split
            self.positions = [FoldPositions(train, test) for train, test in self.folds]

    @property
    def layout(self) -> RunLayout:
        """Where each file of the run folder lives."""
        return RunLayout(self.root)

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @cached_property
    def test_fold(self) -> np.ndarray:
        """int (L,): the fold that held out each lesion (whose network never saw it)."""
        out = np.full(len(self.lesions), -1)
        for k, (_, test) in enumerate(self.folds):
            out[test] = k
        return out

    def fold_of(self, subject_id: str) -> int:
        """The fold whose network did not see ``subject_id``.

        Raises:
            KeyError: the subject is not in the cohort.
        """
        rows = np.flatnonzero(self.lesions["subject_id"].to_numpy() == str(subject_id))
        if not len(rows):
            raise KeyError(f"subject {subject_id!r} is not in the cohort at {self.cohort.root}")
        return int(self.test_fold[rows[0]])

    def modalities(self, variant: str) -> tuple[str, ...]:
        """The modalities of ``variant``.

        Raises:
            KeyError: unknown variant (the message lists the run's variants).
        """
        if variant not in self.config.variants:
            raise KeyError(f"unknown variant {variant!r}; this run has {list(self.config.variants)}")
        return self.config.modalities(variant)

    def checkpoint(self, variant: str, fold: int) -> Path:
        """Path of fold ``fold``'s network of ``variant``.

        Raises:
            RunFolderError: the checkpoint is missing.
        """
        self.modalities(variant)
        return fold_checkpoint(self.layout, variant, fold)

    def network(self, variant: str, fold: int) -> MultimodalNet:
        """Fold ``fold``'s trained network of ``variant``, in eval mode on the CPU.

        Raises:
            RunFolderError: missing checkpoint, or one that does not fit the config.
        """
        path = self.checkpoint(variant, fold)
        preprocessor = self.clinical_preprocessor(fold) if "clinical" in self.modalities(variant) else None
        return load_network(path, self.config, variant, preprocessor, label=f"fold {fold}")

    def fit_positions(self, fold: int) -> np.ndarray:
        """Positions of the lesions fold ``fold``'s network was fitted on: its training lesions, less the
        inner validation subjects when the run held some out for early stopping (``training.val_fraction``)."""
        return self.positions[fold].fit

    def clinical_preprocessor(self, fold: int) -> ClinicalPreprocessor:
        """The clinical preprocessor of fold ``fold``, fitted on the subjects its network was fitted on: the
        run's saved one, else (runs made before it was saved) refitted from the cohort as the run fitted it."""
        if fold not in self._preprocessors:
            saved = saved_preprocessor(self.layout, fold)
            self._preprocessors[fold] = saved if saved is not None else fit_clinical_preprocessor(
                self.lesions, self.cohort.clinical, self.config, self.fit_positions(fold))
        return self._preprocessors[fold]

    @cached_property
    def preprocessing(self) -> dict[str, Params]:
        """Each image modality's preprocessing parameters, as the run derived them from its config."""
        used = {m for name in self.config.variants for m in self.config.modalities(name)}
        return preprocessing_params(self.config, [m for m in IMAGE_MODALITIES
                                                  if m in used and m in self.cohort.modalities])

    @cached_property
    def images(self) -> LesionImages:
        """Preprocessed images of every image modality any variant reads (through the run's cache setting).

        A modality cropped to a localiser's box (``roi: predicted``) is cropped here to the reader's mask, as the
        fitting images were; :meth:`dataset` gives each fold's held-out images their fold localiser's crop."""
        return run_images(self.cohort, self.preprocessing, self.config.model,
                          cache=ArrayCache(enabled=self.config.cache),
                          exclude_unreadable=self.config.exclude_unreadable)

    def localiser(self, modality: str, fold: int):
        """Fold ``fold``'s lesion localiser of a ``roi: predicted`` modality.

        Raises:
            RunFolderError: its checkpoint is missing.
        """
        if (modality, fold) not in self._localisers:
            cfg = getattr(self.config.model, modality).localiser
            path = self.layout.checkpoints.localiser_weights(modality, localiser_tag(cfg), fold)
            if not path.is_file():
                raise RunFolderError(f"{path}: fold {fold}'s lesion localiser is missing; run the experiment again")
            self._localisers[(modality, fold)] = load_localiser(path, cfg)
        return self._localisers[(modality, fold)]

    def fold_images(self, fold: int, positions: np.ndarray) -> LesionImages:
        """:attr:`images` with the lesions at ``positions`` cropped as fold ``fold``'s networks saw them when held
        out: to fold ``fold``'s localiser's box for a ``roi: predicted`` modality (the same images otherwise)."""
        images = self.images
        for modality in predicted_roi_modalities(self.preprocessing):
            images, _ = crop_to_predicted(images, self.cohort, modality, self.preprocessing[modality],
                                          [self.localiser(modality, fold)],
                                          getattr(self.config.model, modality).localiser, positions)
        return images

    def image_rows(self, position: int, modality: str) -> pd.DataFrame:
        """Manifest rows of one lesion's ``modality`` images, in view-slot order (slot i is row i)."""
        manifest = self.cohort.manifest
        lesion_id = self.lesions["lesion_id"].iat[position]
        rows = manifest[(manifest["lesion_id"] == lesion_id) & (manifest["modality"] == modality)]
        excluded = set(self.images.excluded)
        return rows[~rows["path"].isin(excluded)].sort_values(["view", "path"])  # as build_lesion_images

    def lesion_mask(self, position: int, modality: str, slot: int) -> np.ndarray | None:
        """The lesion mask of one image, through the image's own preprocessing geometry.

        The mask files listed in the manifest's ``mask_path`` column (several joined
        by ``|`` are united) are cropped, mirrored and resized exactly as the image
        was (the crop box and flip are those :func:`~breastfusion.data.preprocess.preprocess`
        chose for the image), then thresholded at one half.

        Returns:
            bool (S, S) aligned with ``images.images[modality][position, slot, 0]``, or
            ``None`` when the image has no mask (or none of it is in the image the network saw).
        """
        rows = self.image_rows(position, modality)
        params = self.preprocessing[modality]
        whole_frame = False
        if params.roi == "predicted" and getattr(self.config.model, modality).localiser.views == "crop_and_frame":
            n_crops = self.images.images[modality].shape[1] // 2  # crop slots, then the same images' whole frames
            if slot >= n_crops:
                slot, whole_frame = slot - n_crops, True
        if MASK_COLUMN not in rows.columns or slot >= len(rows):
            return None
        row = rows.iloc[slot].to_dict()
        mask_files, box = _roi_inputs(row, self.cohort.root)
        if not mask_files:
            return None
        mask = _read_mask(mask_files)
        if whole_frame:
            params = dataclasses.replace(params, roi="none")
        elif params.roi == "predicted":  # held out: the crop is its test fold's localiser's box
            fold = int(self.test_fold[position])
            _, boxes = crop_to_predicted(self.images, self.cohort, modality, params, [self.localiser(modality, fold)],
                                         getattr(self.config.model, modality).localiser, np.array([position]))
            box = tuple(int(v) for v in boxes.iloc[slot][["top", "left", "bottom", "right"]])
        prepared = preprocess(read_image(row["path"]), params, roi_mask=mask, roi=box)
        aligned = align_mask(mask, prepared, params) >= 0.5
        return aligned if aligned.any() else None  # e.g. a localiser's box beside the lesion: nothing to score

    def clinical_inputs(self, fold: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fold ``fold``'s clinical features (n, F) and presence (n,) for the lesions at ``positions``."""
        return clinical_features_for(self.lesions.iloc[positions], self.cohort.clinical,
                                     self.clinical_preprocessor(fold))

    def dataset(self, variant: str, fold: int, positions: np.ndarray | None = None) -> LesionDataset:
        """Samples of ``variant`` for the lesions at ``positions`` (default: fold ``fold``'s test lesions),
        with fold ``fold``'s clinical preprocessing."""
        positions = self.folds[fold][1] if positions is None else np.asarray(positions)
        modalities = self.modalities(variant)
        clinical = self.clinical_inputs(fold, positions) if "clinical" in modalities else (None, None)
        return LesionDataset(self.fold_images(fold, positions), positions, self.lesions["y"].to_numpy()[positions],
                             modalities, *clinical)

    @torch.no_grad()
    def predict(self, variant: str, *, batch_size: int = 64) -> pd.DataFrame:
        """Out-of-fold P(malignant) recomputed from the checkpoints (equals ``predictions.csv``).

        Returns:
            ``fold, subject_id, lesion_id, y, prob`` per lesion, in the order of :attr:`lesions`.
        """
        prob = np.zeros(len(self.lesions))
        for k in range(self.n_folds):
            net, data = self.network(variant, k), self.dataset(variant, k)
            loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
            prob[self.folds[k][1]] = torch.cat([torch.sigmoid(tta_logits(net, prepare_batch(b), self.config.training.tta))
                                                for b in loader]).numpy()
        out = self.lesions[["subject_id", "lesion_id", "y"]].copy()
        out.insert(0, "fold", self.test_fold)
        out["prob"] = prob
        return out


def fold_checkpoint(layout: RunLayout, variant: str, fold: int) -> Path:
    """Path of fold ``fold``'s network of ``variant`` in the run folder ``layout``.

    Raises:
        RunFolderError: the checkpoint is missing.
    """
    path = layout.checkpoints.variant_weights(variant, fold)
    if not path.is_file():
        raise RunFolderError(f"no checkpoint {path}; runs made before checkpoints were saved cannot be "
                             "explained: run the experiment again")
    return path


def saved_preprocessor(layout: RunLayout, fold: int) -> ClinicalPreprocessor | None:
    """Fold ``fold``'s clinical preprocessor as the run saved it, or ``None`` (a run made before they were saved).

    Read with the bundle's trusted-types rule (:func:`breastfusion.bundle.load_clinical_preprocessor`): a file
    holding any other type is refused, never unpickled.
    """
    from breastfusion.bundle import load_clinical_preprocessor

    path = layout.checkpoints.clinical_preprocessor(fold)
    return load_clinical_preprocessor(path) if path.is_file() else None


def load_network(path: Path, config: ExperimentConfig, variant: str,
                 clinical_preprocessor: ClinicalPreprocessor | None = None, *,
                 label: str = "the fold") -> MultimodalNet | SeedEnsemble:
    """A checkpoint's network of ``variant``, built from ``config``, in eval mode on the CPU.

    Args:
        path: the ``.safetensors`` file (weights only; its metadata names its modalities and clinical width).
        config: the run's configuration.
        variant: the variant the checkpoint belongs to.
        clinical_preprocessor: the fold's fitted preprocessor, when the variant reads clinical data (its
            feature count must match the checkpoint's).
        label: how to name the preprocessor in messages (e.g. ``fold 2``).

    Raises:
        RunFolderError: the checkpoint does not fit the config (modalities, clinical width or weights).
    """
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    spec = network_spec(config, variant)  # score-level fusion's network is its image modalities' network
    modalities = spec.modalities
    if meta.get("modalities") and tuple(meta["modalities"].split(",")) != modalities:
        raise RunFolderError(f"{path}: holds modalities {meta['modalities']}, the config's variant {variant!r} "
                             f"has {list(modalities)}")
    n_clinical = int(meta.get("n_clinical_features", 0))
    if "clinical" in modalities and (clinical_preprocessor is None
                                     or n_clinical != clinical_preprocessor.n_features_):
        given = "none was given" if clinical_preprocessor is None else \
            f"gives {clinical_preprocessor.n_features_}; the clinical table changed"
        raise RunFolderError(f"{path}: {n_clinical} clinical features, but {label}'s clinical preprocessor {given}")
    # Weights come from the checkpoint: do not read the encoder's initial weights file again.
    model = spec.model
    model = model.model_copy(update={m: getattr(model, m).model_copy(update={"weights": None})
                                     for m in IMAGE_MODALITIES})
    seeds = spec.training.seeds
    if int(meta.get("seeds", 1)) != seeds:
        raise RunFolderError(f"{path}: holds a network of {meta['seeds']} seed(s), the config's training.seeds is "
                             f"{seeds}")
    net = build_network(modalities, model, n_clinical, seeds=seeds)
    try:
        net.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise RunFolderError(f"{path} does not fit the network the config builds: {exc}") from None
    return net.eval()


def _find_cohort(root: Path, config: ExperimentConfig, results: dict[str, Any],
                 allow_outside_root: bool) -> Cohort:
    candidates = [RunLayout(root).cohort]
    if config.manifest is not None:
        candidates += [Path(config.manifest), root / config.manifest]
    if results.get("cohort", {}).get("root"):
        candidates.append(Path(results["cohort"]["root"]))
    expected = results.get("manifest_sha256")
    tried = []
    for candidate in candidates:
        manifest = candidate if candidate.suffix.lower() == ".csv" else candidate / MANIFEST_FILENAME
        if not manifest.is_file():
            tried.append(f"{manifest} (absent)")
            continue
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        if expected and digest != expected:
            tried.append(f"{manifest} (sha256 {digest[:12]}…, the run recorded {expected[:12]}…)")
            continue
        return load_cohort(candidate, allow_outside_root=allow_outside_root)
    raise RunFolderError(f"{root}: cannot find the run's cohort; tried " + "; ".join(tried))


def refuse_ensemble(layout: RunLayout) -> None:
    """Raise :class:`RunFolderError` when the folder is an ensemble of runs (``breastfusion ensemble``): it holds
    the members' averaged predictions but no networks, so what needs networks (export, explain) needs a member."""
    if layout.ensemble.is_file():
        members = [str(m.get("run")) for m in json.loads(layout.ensemble.read_text()).get("members", [])]
        raise RunFolderError(f"{layout.root} is an ensemble of runs ({', '.join(members)}): it holds their averaged "
                             "predictions, not networks; export or explain each member run")


def load_run(path: str | Path, *, allow_outside_root: bool = False) -> RunArtifacts:
    """Reload a run folder written by :func:`~breastfusion.experiment.run.run_experiment`.

    Args:
        path: the run folder.
        allow_outside_root: accept manifest image paths outside the cohort folder
            (as the run itself may have).

    Raises:
        RunFolderError: a file the run writes is missing, or the cohort cannot be
            found unchanged.
    """
    root = Path(path)
    layout = RunLayout(root)
    problem = layout.missing_file()
    if problem:
        raise RunFolderError(problem)
    refuse_ensemble(layout)
    config = load_config(layout.config)
    results = json.loads(layout.results.read_text())
    cohort = _find_cohort(root, config, results, allow_outside_root)
    lesions = cohort.lesions
    positions = fold_positions(cohort, config)[0]
    predictions = pd.read_csv(layout.predictions, dtype={"subject_id": str, "lesion_id": str})
    return RunArtifacts(root=root, config=config, cohort=cohort, results=results, predictions=predictions,
                        lesions=lesions, folds=[(p.train, p.test) for p in positions], positions=positions)

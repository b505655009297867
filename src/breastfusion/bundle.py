"""A fitted model that can be applied to new cases: one variant of a run, in a folder that is safe to load.

:func:`export_bundle` turns a finished cross-validation run into a *bundle*
folder; :func:`load_bundle` reads it back as a :class:`Bundle`, whose
``predict`` applies it to a cohort folder, a manifest DataFrame or one case held in memory (arrays or an
upload's bytes, nothing written; see :mod:`breastfusion.predict`).
A bundle holds a variant's K fold networks, not one refitted model: every
prediction is the mean of the K networks, each scored exactly as the run
scored its held-out subjects (aggregation, recalibration and thresholds fitted
on that fold's calibration subjects), so the numbers the run reports describe
the bundle's members.

Files:

* ``bundle.json``: format version, breastfusion version, variant, modalities,
  ``n_folds``, the run's ``manifest_sha256``, the variant's out-of-fold
  ``metrics`` from ``results.json`` (``auc``, ``auc_ci``, ``threshold_metrics``),
  the ``evaluation`` settings, ``preprocessing``, the clinical columns the
  preprocessors expect, library ``versions`` (at export; ``run_versions`` at
  training) and the sha256 of every other file;
* ``config.yaml``: the run's resolved configuration (read with ``yaml.safe_load``);
* ``fold{k}.safetensors``: fold ``k``'s network (weights only);
* ``clinical_fold{k}.skops``: fold ``k``'s fitted clinical preprocessor, when the variant reads clinical data;
* ``fold{k}.stage2.skops``: fold ``k``'s fitted stage-2 learner (MPM-MU's stacking ensemble, or one of its
  learners) on the network's deep features, for a stage-2 variant;
* ``fold{k}.score.skops``: fold ``k``'s fitted clinical learner, for a score-level fusion variant
  (``model.fusion: score``: its probability is averaged with the image network's);
* ``localiser_{modality}_fold{k}.safetensors``: fold ``k``'s lesion localiser, for a modality cropped to a
  localiser's box (``preprocess.roi: predicted``; :mod:`breastfusion.experiment.localisation`): a new image is
  cropped to the box of the mean of the folds' probability maps;
* ``calibration.csv``: each fold's calibration lesion scores (repeat 0) with
  anonymous ids (``s0001`` / ``l0001``): the grouping of lesions into subjects is
  kept, the identity of the run's subjects is not.

Loading is strict: every key and value of ``bundle.json`` is validated (:mod:`breastfusion.bundle_meta`) and must
agree with ``config.yaml``; the folder must hold exactly the listed files plus ``bundle.json`` (an unlisted file,
e.g. a ``.pkl``, a sub-folder or a symbolic link is refused, naming it); each file's bytes are read once, without
following links, checked against their sha256 and parsed from those bytes (a truncated safetensors file is
refused, naming it). :func:`export_bundle` is atomic: it writes into a hidden sibling folder, writes
``bundle.json`` last (as ``bundle.json.partial``), renames the folder into place, then renames the metadata file;
a process killed at any point leaves either nothing at ``out`` or a folder that :func:`load_bundle` refuses as
an interrupted export.

Loading never unpickles. Networks are safetensors. The preprocessors are read
and stage-2 learners are read with ``skops.io.load``, trusting only classes (never functions: a crafted file
could call a trusted callable, e.g. ``builtins.eval`` or ``numpy.load``) from
scikit-learn, the array and dtype classes of NumPy, SciPy's sparse matrices,
plain built-in data types, :class:`~breastfusion.data.clinical_features.ClinicalPreprocessor` and
:class:`~breastfusion.models.stage2.Stage2Classifier` (whose parts are checked like any other);
anything else is refused, naming the file and the type. The sha256s detect a
file changed or damaged after export; they are not a signature (whoever can
edit the files can edit ``bundle.json``), which is why the loading itself is safe.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from breastfusion import __version__
from breastfusion.bundle_meta import BundleError, BundleMetaError, validate_meta
from breastfusion.bundle_renames import with_current_modules
from breastfusion.config import ConfigError, ExperimentConfig, load_config, reference_variant
from breastfusion.data.clinical_features import ClinicalPreprocessor
from breastfusion.data.manifest import IMAGE_MODALITIES, Cohort
from breastfusion.data.preprocess import Params
from breastfusion.versions import library_versions

if TYPE_CHECKING:  # torch is imported when a bundle is loaded, not when this module is
    from breastfusion.ensemble_bundle import EnsembleBundle
    from breastfusion.models.network import MultimodalNet

__all__ = ["BUNDLE_FILE", "PARTIAL_META", "FORMAT", "FORMAT_VERSION", "Bundle", "BundleScoring", "BundleError",
           "anonymise_calibration", "fresh_partial", "read_plain", "sha256_hex", "export_bundle",
           "load_bundle", "load_clinical_preprocessor"]

logger = logging.getLogger(__name__)

FORMAT = "breastfusion-bundle"
#: Bumped when a bundle written by this version cannot be read by an older one.
FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
#: ``bundle.json`` while an export is being published (its presence means the export was interrupted).
PARTIAL_META = BUNDLE_FILE + ".partial"
_CLINICAL_TYPE = f"{ClinicalPreprocessor.__module__}.{ClinicalPreprocessor.__qualname__}"
#: MPM-MU's stacking estimator (named, not imported: importing breastfusion.models here would import torch).
_STAGE2_TYPE = "breastfusion.models.stage2.Stage2Classifier"
_SAFE_BUILTINS = frozenset(f"builtins.{name}" for name in (
    "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple", "dict", "set", "frozenset",
    "slice", "NoneType"))
_CALIBRATION_COLUMNS = ["fold", "subject_id", "lesion_id", "y", "prob", "split"]
_VERSIONED = ("breastfusion", "torch", "timm", "scikit-learn", "numpy", "pandas", "safetensors", "skops")


class BundleScoring:
    """Scoring shared by every kind of bundle: a subclass gives ``predict_lesions`` (one row per fold and lesion),
    ``calibration`` (each fold's calibration scores), ``config`` (its ``evaluation``) and ``modalities``."""

    def score(self, lesions: pd.DataFrame) -> pd.DataFrame:
        """Per (fold, subject) scores of :meth:`predict_lesions`'s output (:func:`breastfusion.predict.score_folds`)."""
        from breastfusion.predict import score_folds

        return score_folds(self, lesions)

    def predict(self, cohort: Cohort | pd.DataFrame | str | Path | None = None, *,
                images: Mapping[str, Any] | None = None, clinical: pd.DataFrame | Mapping[str, Any] | None = None,
                root: str | Path | None = None, batch_size: int = 64, cache: bool = False,
                runtime: str = "torch") -> pd.DataFrame:
        """One row per subject of ``cohort``: the folds' mean probability, the call and the folds' votes.

        ``bundle.predict("new-cases/")``, ``bundle.predict(manifest_frame, clinical=table, root="images/")`` or,
        for one case held in memory (nothing is written to disk),
        ``bundle.predict(images={"ultrasound": array_or_bytes, "mammography": {"CC": a, "MLO": b}},
        clinical={"age": 54, ...})``.

        Args:
            cohort: a cohort folder (``manifest.csv``, optional ``clinical.csv``; ``label`` may be empty or
                absent), its manifest CSV, a loaded :class:`~breastfusion.data.manifest.Cohort`, or a manifest
                DataFrame (the columns of ``manifest.csv``), validated as a folder's manifest is.
            images: instead of ``cohort``, one case (subject ``case``): ``{image modality: image}``, an image being
                a pixel array (H, W) (:func:`~breastfusion.data.readers.image_from_array`), an encoded file's bytes
                (:func:`~breastfusion.data.readers.read_image_bytes`) or a list or ``{view: image}`` of them.
            clinical: with ``images``, the case's clinical values ``{column: value}``: every column the bundle reads
                (``None`` for an unknown value, imputed as in training); with a manifest DataFrame, its clinical
                table (``subject_id`` + one column per variable).
            root: with a manifest DataFrame, the folder its relative image paths resolve against (default: the
                working directory).
            batch_size: lesions per forward pass.
            cache: use the preprocessed-array cache (``$BREASTFUSION_CACHE``); off by default, so
                predicting leaves nothing behind.
            runtime: ``torch``, or ``onnx``: the fold networks' ONNX graphs on ONNX Runtime (CPU; the bundle
                must be exported with ``--onnx``), the same probabilities to 1e-4.

        Returns:
            See :func:`breastfusion.predict.combine_folds`.

        Raises:
            ManifestError, FileNotFoundError: the cohort (folder or DataFrame) breaks the manifest contract.
            ImageReadError: unreadable images (unless the run's config excludes them), or an in-memory image that
                does not decode or has the wrong shape (its key named).
            InMemoryCaseError: an unknown modality, a modality the bundle does not read, or an unknown or missing
                clinical column (the key named, with what was expected).
            BundleError: no case has any of the bundle's modalities.
            TypeError: both or neither of ``cohort`` and ``images``.
        """
        from breastfusion.predict import combine_folds

        return combine_folds(self.score(self.predict_lesions(cohort, images=images, clinical=clinical, root=root,
                                                            batch_size=batch_size, cache=cache, runtime=runtime)))


@dataclass
class Bundle(BundleScoring):
    """A loaded bundle (build with :func:`load_bundle`).

    Attributes:
        root: the bundle folder.
        meta: ``bundle.json``.
        config: the run's configuration.
        networks: the K fold networks, in eval mode on the CPU.
        clinical_preprocessors: each fold's fitted preprocessor (``None`` when the variant reads no clinical data).
        calibration: each fold's calibration lesion scores (``fold, subject_id, lesion_id, y, prob, split``).
        stage2_learners: each fold's fitted stage-2 learner on its network's deep features (``None`` for a
            network variant, whose prediction is the network's output).
        score_learners: each fold's fitted clinical learner of score-level fusion (``None`` unless the variant
            has ``model.fusion: score``), averaged with the fold's image network.
        localisers: ``{modality: the K fold lesion localisers}`` for each modality with ``preprocess.roi:
            predicted`` (empty otherwise).
    """

    root: Path
    meta: dict[str, Any] = field(repr=False)
    config: ExperimentConfig = field(repr=False)
    networks: list[MultimodalNet] = field(repr=False)
    clinical_preprocessors: list[ClinicalPreprocessor] | None = field(repr=False)
    calibration: pd.DataFrame = field(repr=False)
    stage2_learners: list[Any] | None = field(default=None, repr=False)
    score_learners: list[Any] | None = field(default=None, repr=False)
    onnx_graphs: list[bytes] | None = field(default=None, repr=False)  # fold{k}.onnx (export --onnx), verified
    localisers: dict[str, list[Any]] = field(default_factory=dict, repr=False)  # roi: predicted modality -> K U-Nets
    _onnx_folds: dict = field(default_factory=dict, repr=False)

    @property
    def variant(self) -> str:
        return self.meta["variant"]

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities(self.variant)

    @property
    def n_folds(self) -> int:
        return len(self.networks)

    @cached_property
    def preprocessing(self) -> dict[str, Params]:
        """Each image modality's preprocessing parameters, as the run derived them from its config."""
        from breastfusion.experiment.crossval import preprocessing_params

        return preprocessing_params(self.config, [m for m in IMAGE_MODALITIES if m in self.modalities])

    def predict_lesions(self, cohort: Cohort | pd.DataFrame | str | Path | None = None, *,
                        images: Mapping[str, Any] | None = None,
                        clinical: pd.DataFrame | Mapping[str, Any] | None = None, root: str | Path | None = None,
                        batch_size: int = 64, cache: bool = False, runtime: str = "torch") -> pd.DataFrame:
        """Every fold network's P(malignant) for every lesion; see :func:`breastfusion.predict.predict_lesions`."""
        from breastfusion.predict import predict_lesions

        return predict_lesions(self, cohort, images=images, clinical=clinical, root=root, batch_size=batch_size,
                               cache=cache, runtime=runtime)

    def onnx_fold(self, k: int, *, threads: int | None = None):
        """Fold ``k``'s ONNX Runtime graph (:class:`~breastfusion.onnx_export.OnnxFold`), made once.

        Raises:
            BundleError: the bundle was exported without ``--onnx``.
            OnnxUnavailableError: onnxruntime is not installed.
        """
        if self.onnx_graphs is None:
            raise BundleError(f"{self.root} holds no ONNX graphs; export it again with `breastfusion export RUN "
                              "--out DIR --onnx`, or predict with --runtime torch")
        key = (k, threads)
        if key not in self._onnx_folds:
            from breastfusion.onnx_export import OnnxFold, onnx_session

            self._onnx_folds[key] = OnnxFold(onnx_session(self.onnx_graphs[k], threads=threads))
        return self._onnx_folds[key]


# -- export ------------------------------------------------------------------------------------------------------

def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data`` (how a bundle lists each file it holds)."""
    return hashlib.sha256(data).hexdigest()


def anonymise_calibration(calibration: pd.DataFrame) -> pd.DataFrame:
    """Calibration rows with subject and lesion ids replaced by ``s0001`` / ``l0001`` (in order of appearance).

    The same subject (lesion) gets the same id in every fold, so aggregation to subjects is unchanged.
    """
    out = calibration[_CALIBRATION_COLUMNS].copy()
    for column, prefix in (("subject_id", "s"), ("lesion_id", "l")):
        codes, uniques = pd.factorize(out[column].astype(str))
        width = max(4, len(str(len(uniques))))
        out[column] = [f"{prefix}{code + 1:0{width}d}" for code in codes]
    return out


def export_bundle(run_dir: str | Path, out: str | Path, *, variant: str | None = None, onnx: bool = False,
                  allow_outside_root: bool = False) -> Path:
    """Write one variant of a finished run as a bundle folder.

    Everything comes from the run folder: each fold's network and learners, and each fold's clinical
    preprocessor as the cross-validation fitted and saved it, so the cohort may have moved or gone. Runs made
    before the preprocessors were saved fall back to refitting them from the cohort exactly as the run fitted
    them (:func:`~breastfusion.experiment.crossval.fit_clinical_preprocessor`): for those, the cohort must
    still be where the run found it, unchanged.

    Args:
        run_dir: a run folder (``breastfusion run`` / ``demo``).
        out: the bundle folder to create (absent or empty).
        variant: the variant to export (default: the run's reference variant).
        onnx: also write each fold network as ``fold{k}.onnx`` (:mod:`breastfusion.onnx_export`), listed with
            its sha256 like the other files, for ``predict --runtime onnx``.
        allow_outside_root: accept cohort image paths outside the cohort folder (as the run may have:
            :meth:`breastfusion.api.Experiment.fit` on a manifest DataFrame).

    Returns:
        ``out``.

    Raises:
        BundleError: unknown or stage-2 variant (the message lists the exportable ones), ``out`` not empty,
            or a fold without checkpoint or calibration scores.
        RunFolderError: not a run folder, a missing or unfitting checkpoint, or (an old run without saved
            clinical preprocessors) its cohort cannot be found unchanged.
    """
    from breastfusion.experiment.crossval import preprocessing_params
    from breastfusion.experiment.localisation import localiser_tag
    from breastfusion.experiment.run_artifacts import RunFolderError, fold_checkpoint, load_network
    from breastfusion.experiment.run_folder import RunLayout

    root, out = Path(run_dir), Path(out)
    layout = RunLayout(root)
    checkpoints = layout.checkpoints
    problem = layout.missing_file()
    if problem:
        raise RunFolderError(problem)
    if layout.ensemble.is_file():  # breastfusion ensemble's folder: its members' bundles and its calibration
        from breastfusion.ensemble_bundle import export_ensemble_bundle

        return export_ensemble_bundle(root, out, variant=variant, onnx=onnx, allow_outside_root=allow_outside_root)
    config = load_config(layout.config)
    variant = variant or reference_variant(config)
    if variant not in config.variants:
        raise BundleError(f"unknown variant {variant!r}; this run has {list(config.variants)}")
    learner = config.variant(variant).stage2
    n_folds = config.n_folds
    score = config.variant_model(variant).fusion == "score"
    if score:
        lacking = [k for k in range(n_folds) if not checkpoints.learner(variant, k, "score").is_file()]
        if lacking:
            raise BundleError(f"{checkpoints.variant_dir(variant)}: no fitted clinical learner of score-level fusion "
                              f"for fold(s) {lacking} (runs made before they were saved do not have them); run the "
                              "experiment again")
    if learner != "none":
        lacking = [k for k in range(n_folds) if not checkpoints.learner(variant, k, "stage2").is_file()]
        if lacking:
            raise BundleError(f"{checkpoints.variant_dir(variant)}: no fitted stage-2 learner for fold(s) {lacking} "
                              f"(runs made before stage-2 learners were saved do not have them); run the "
                              f"experiment again, or export one of the network variants "
                              f"{[v for v in config.variants if config.variant(v).stage2 == 'none']}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists and is not an empty folder; choose another --out or remove it")

    if onnx:
        from breastfusion.onnx_export import require_onnx

        require_onnx()
    results = json.loads(layout.results.read_text())
    calibration = pd.read_csv(layout.calibration, dtype={"subject_id": str, "lesion_id": str})
    calibration = calibration[(calibration["variant"] == variant)
                              & (calibration.get("repeat", 0) == 0)].reset_index(drop=True)
    lacking = sorted(set(range(n_folds)) - set(calibration["fold"]))
    if lacking:
        raise BundleError(f"{layout.calibration}: no calibration scores of variant {variant!r} "
                          f"for fold(s) {lacking}; run the experiment again")
    modalities = config.modalities(variant)
    clinical = "clinical" in modalities
    preprocessors = _fold_preprocessors(layout, n_folds, allow_outside_root) if clinical else None

    predicted = _predicted_roi(config, modalities)
    localiser_files = {m: [checkpoints.localiser_weights(m, localiser_tag(getattr(config.model, m).localiser), k)
                           for k in range(n_folds)] for m in predicted}
    lacking = [str(path) for paths in localiser_files.values() for path in paths if not path.is_file()]
    if lacking:
        raise BundleError(f"the run crops {', '.join(predicted)} to a lesion localiser's box, but its localiser "
                          f"checkpoint(s) are missing: {lacking[:3]}; run the experiment again")

    partial = fresh_partial(out)
    try:
        shutil.copyfile(layout.config, partial / "config.yaml")
        anonymise_calibration(calibration).to_csv(partial / "calibration.csv", index=False)
        columns: dict[str, list[str]] = {}
        for k in range(n_folds):
            checkpoint = fold_checkpoint(layout, variant, k)
            preprocessor, saved = preprocessors[k] if clinical else (None, None)
            # fails here, not at prediction time, when a checkpoint does not fit
            net = load_network(checkpoint, config, variant, preprocessor, label=f"fold {k}")
            if onnx:
                from breastfusion.onnx_export import export_bundle_fold, onnx_file

                export_bundle_fold(net, partial / onnx_file(k), config, variant,
                                   preprocessor.n_features_ if clinical else 0)
            shutil.copyfile(checkpoint, partial / f"fold{k}.safetensors")
            for m in predicted:
                shutil.copyfile(localiser_files[m][k], partial / localiser_file(m, k))
            for kind in (["stage2"] if learner != "none" else []) + (["score"] if score else []):
                shutil.copyfile(checkpoints.learner(variant, k, kind), partial / f"fold{k}.{kind}.skops")
            if clinical:
                if saved is not None:  # the run's own file, byte for byte
                    shutil.copyfile(saved, partial / f"clinical_fold{k}.skops")
                else:
                    import skops.io

                    skops.io.dump(preprocessor, partial / f"clinical_fold{k}.skops")
                for kind, names in preprocessor.types_.items():
                    columns.setdefault(kind, [])
                    columns[kind] += [c for c in names if c not in columns[kind]]
        entry = results["variants"][variant]
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "breastfusion_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_name": config.name, "run_created": results.get("created"),
            "variant": variant, "modalities": list(modalities), "n_folds": n_folds, "stage2": learner,
            "manifest_sha256": results.get("manifest_sha256"),
            "metrics": {"level": "subject, out-of-fold", "auc": entry.get("auc"), "auc_ci": entry.get("auc_ci"),
                        "threshold_metrics": entry.get("threshold_metrics"),
                        "n_subjects": entry.get("n_subjects"), "n_malignant": entry.get("n_malignant")},
            "evaluation": config.evaluation.model_dump(mode="json"),
            "preprocessing": {m: p.to_dict() for m, p in preprocessing_params(
                config, [m for m in IMAGE_MODALITIES if m in modalities]).items()},
            "clinical_columns": columns if clinical else None,
            "versions": library_versions(_VERSIONED), "run_versions": results.get("versions"),
            "files": {f.name: sha256_hex(f.read_bytes()) for f in sorted(partial.iterdir())},
        }
        _write_synced(partial / PARTIAL_META, json.dumps(meta, indent=2).encode())
        if out.exists():
            out.rmdir()
        _publish(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _fold_preprocessors(layout, n_folds: int, allow_outside_root: bool
                        ) -> list[tuple[ClinicalPreprocessor, Path | None]]:
    """Each fold's clinical preprocessor with the run-folder file it was read from.

    The run's saved files when every fold has one (read with the trusted-types rule); otherwise (a run made
    before they were saved) refitted from the run's cohort, which must then be found unchanged, with ``None``
    for the file.
    """
    from breastfusion.experiment.run_artifacts import load_run

    saved = [layout.checkpoints.clinical_preprocessor(k) for k in range(n_folds)]
    if all(path.is_file() for path in saved):
        return [(load_clinical_preprocessor(path), path) for path in saved]
    art = load_run(layout.root, allow_outside_root=allow_outside_root)
    return [(art.clinical_preprocessor(k), None) for k in range(n_folds)]


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` and flush it to disk (so a rename after it never publishes a half-written file)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _publish(partial: Path, out: Path) -> None:
    """Move a complete export into place: the folder first, then its ``bundle.json`` (the bundle exists only then).

    A kill before the first rename leaves only the hidden ``partial`` folder (no ``bundle.json``: not a bundle);
    between the two, ``out`` holds ``bundle.json.partial`` and no ``bundle.json``, which :func:`load_bundle`
    refuses as an interrupted export.
    """
    for file in partial.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    partial.rename(out)
    os.replace(out / PARTIAL_META, out / BUNDLE_FILE)


def fresh_partial(out: Path) -> Path:
    """An empty hidden sibling folder ``.{out}.partial-{pid}`` to export into (stale ones of dead exports removed);
    the export renames it to ``out`` once complete."""
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _remove_stale_partials(out: Path) -> None:
    """Remove hidden ``.{out}.partial-{pid}`` folders left by exports whose process is gone (killed)."""
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass  # alive, or not ours to judge


# -- load --------------------------------------------------------------------------------------------------------

def _resolve(name: str) -> Any:
    """The object a dotted name refers to (importing its module), or ``None``."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        return obj
    return None


def _allowed_type(name: str) -> bool:
    """Whether a skops file may construct objects of ``name`` (see the module docstring)."""
    if name in (_CLINICAL_TYPE, _STAGE2_TYPE):
        return True
    if name.startswith("builtins."):
        return name in _SAFE_BUILTINS
    family = name.split(".", 1)[0]
    if family not in ("sklearn", "numpy", "scipy"):
        return False
    cls = _resolve(name)
    if not isinstance(cls, type):
        return False
    if family == "sklearn":
        return True
    if family == "numpy":
        import numpy as np

        return cls is np.ndarray or issubclass(cls, (np.dtype, np.generic, np.random.Generator,
                                                      np.random.BitGenerator, np.random.RandomState))
    import scipy.sparse

    return issubclass(cls, (scipy.sparse.sparray, scipy.sparse.spmatrix))


def _load_skops(path: Path, data: bytes, expected: type, what: str) -> Any:
    """A skops file's object, after checking every type it would construct against the allowlist."""
    import skops.io

    data = with_current_modules(data)  # a bundle exported before a module rename names the old module
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged or foreign file: skops raises many kinds
        raise BundleError(f"{path}: not a readable skops file ({exc})") from None
    refused = [name for name in untrusted if not _allowed_type(name)]
    if refused:
        raise BundleError(f"{path}: refusing to load type(s) {refused}; a {what} file may hold "
                          f"only {_CLINICAL_TYPE}, {_STAGE2_TYPE} and scikit-learn, NumPy, SciPy and built-in "
                          "data classes")
    obj = skops.io.load(io.BytesIO(data), trusted=untrusted)
    if not isinstance(obj, expected):
        raise BundleError(f"{path}: holds a {type(obj).__name__}, expected a {expected.__module__}."
                          f"{expected.__qualname__}")
    return obj


def _load_learners(root: Path, data: dict[str, bytes], n_folds: int, kind: str, what: str) -> list[Any]:
    """Each fold's fitted scikit-learn learner ``fold{k}.{kind}.skops`` (stage-2, or score fusion's clinical one)."""
    from sklearn.base import BaseEstimator

    learners = [_load_skops(root / f"fold{k}.{kind}.skops", data[f"fold{k}.{kind}.skops"], BaseEstimator, what)
                for k in range(n_folds)]
    unfit = [k for k, learner in enumerate(learners) if not hasattr(learner, "predict_proba")]
    if unfit:
        raise BundleError(f"{root}: the {what} of fold(s) {unfit} has no predict_proba")
    return learners


def _load_preprocessor(path: Path, data: bytes) -> ClinicalPreprocessor:
    return _load_skops(path, data, ClinicalPreprocessor, "clinical preprocessor")


def load_clinical_preprocessor(path: Path) -> ClinicalPreprocessor:
    """A fitted clinical preprocessor from a skops file (a run's or a bundle's), by the trusted-types rule.

    Raises:
        BundleError: the file is unreadable, would construct a type outside the allowlist (naming it), or
            holds something other than a :class:`~breastfusion.data.clinical_features.ClinicalPreprocessor`.
    """
    return _load_preprocessor(Path(path), Path(path).read_bytes())


def _read_meta(root: Path) -> dict[str, Any]:
    """``bundle.json``, parsed and validated against :class:`~breastfusion.bundle_meta.BundleMeta`."""
    file = root / BUNDLE_FILE
    if not file.exists() and not file.is_symlink():
        if (root / PARTIAL_META).exists():
            raise BundleError(f"{root}: the export that wrote this folder was interrupted ({PARTIAL_META} is there, "
                              f"{BUNDLE_FILE} is not); remove the folder and export the bundle again")
        raise BundleError(f"{root} is not a bundle: {BUNDLE_FILE} is missing "
                          "(make one with `breastfusion export RUN --out DIR`)")
    try:
        meta = json.loads(read_plain(root, BUNDLE_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: not valid JSON ({exc}); the file is damaged or half-written: export the "
                          "bundle again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise BundleError(f"{file}: not a breastfusion bundle (format {found!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise BundleError(f"{file}: format version {version!r}; this breastfusion "
                          f"({__version__}) reads up to {FORMAT_VERSION}: upgrade breastfusion")
    try:
        validate_meta(meta)
    except BundleMetaError as exc:
        listed = "\n".join(f"  - {p}" for p in exc.problems)
        raise BundleError(f"{file}: {len(exc.problems)} invalid value(s)\n{listed}") from None
    return meta


def read_plain(root: Path, name: str) -> bytes:
    """The bytes of ``root / name``, refusing a symbolic link (``O_NOFOLLOW``: checked and read in one step)."""
    path = root / name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise BundleError(f"{path} is missing; the bundle is incomplete: export it again") from None
    except OSError as exc:
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link (to {os.readlink(path)}); a bundle holds its own files "
                              "only: replace the link with the exported file or export the bundle again") from None
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise BundleError(f"{path} is not a regular file")
        return handle.read()


def _verified(root: Path, meta: dict[str, Any], needed: list[str]) -> dict[str, bytes]:
    """The bytes of every listed file, each checked against its sha256 in ``bundle.json``.

    The folder must hold exactly ``bundle.json`` and the ``needed`` files, each listed: anything else (an
    unlisted file, a sub-folder, a symbolic link) is refused, naming it.
    """
    files = meta["files"]
    unlisted = [name for name in needed if name not in files]
    if unlisted:
        raise BundleError(f"{root / BUNDLE_FILE}: lists no sha256 for {unlisted}; export the bundle again")
    unexpected = sorted(set(files) - set(needed))
    if unexpected:
        raise BundleError(f"{root / BUNDLE_FILE}: lists file(s) {unexpected} that a bundle of this variant does not "
                          f"hold (expected {sorted(needed)}); export the bundle again")
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            raise BundleError(f"{entry} is a symbolic link (to {os.readlink(entry)}); a bundle holds its own files "
                              "only: replace the link with the exported file or export the bundle again")
        if entry.name != BUNDLE_FILE and entry.name not in files:
            kind = "folder" if entry.is_dir() else "file"
            raise BundleError(f"{entry}: {kind} not listed in {BUNDLE_FILE}; a bundle holds only the files it lists "
                              f"({sorted(files)}): remove it, or export the bundle again")
    out = {}
    for name, expected in files.items():
        path = root / name
        data = read_plain(root, name)
        actual = sha256_hex(data)
        if actual != expected:
            raise BundleError(f"{path}: sha256 {actual[:12]}… differs from the {str(expected)[:12]}… recorded in "
                              f"{BUNDLE_FILE}; the file was changed or damaged after export: export the bundle again")
        out[name] = data
    return out


def _check_safetensors(path: Path, data: bytes) -> None:
    """Parse a network file from its verified bytes (a truncated or foreign file is refused here, named)."""
    from safetensors.torch import load

    try:
        load(data)
    except Exception as exc:  # safetensors raises SafetensorError, or a torch error for a corrupt payload
        raise BundleError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); it is truncated "
                          "or damaged: export the bundle again") from None


def _check_against_config(root: Path, meta: dict[str, Any], config: ExperimentConfig) -> None:
    """``bundle.json``'s description of the variant must be the one ``config.yaml`` gives."""
    variant = meta["variant"]
    expected = {"modalities": list(config.modalities(variant)), "n_folds": config.n_folds,
                "stage2": config.variant(variant).stage2}
    differ = [f"{key} {meta[key]!r} (config.yaml gives {value!r})" for key, value in expected.items()
              if meta[key] != value]
    if differ:
        raise BundleError(f"{root / BUNDLE_FILE}: disagrees with config.yaml on " + "; ".join(differ)
                          + ": export the bundle again")


def load_bundle(path: str | Path) -> Bundle | EnsembleBundle:
    """Read a bundle folder written by :func:`export_bundle`, verifying every file first (an ensemble run's
    bundle is read by :func:`breastfusion.ensemble_bundle.load_ensemble_bundle`, which loads each member here).

    Raises:
        BundleError: not a bundle, a newer format, an invalid bundle.json value (naming the key), a
            bundle.json that disagrees with config.yaml, a missing, unlisted or symlinked file, a sha256
            mismatch, a truncated network file (naming the file), an interrupted export, a preprocessor
            file holding a type outside the allowlist (naming the file and the type), or networks that do
            not fit the configuration.
    """
    from breastfusion.experiment.run_artifacts import RunFolderError, load_network

    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle folder" + (" (it does not exist)" if not root.exists() else ""))
    from breastfusion.ensemble_bundle import is_ensemble_bundle, load_ensemble_bundle

    if is_ensemble_bundle(root):
        return load_ensemble_bundle(root)
    meta = _read_meta(root)
    n_folds, variant = meta["n_folds"], meta["variant"]
    try:
        config = load_config(root / "config.yaml") if (root / "config.yaml").is_file() else None
    except ConfigError as exc:
        raise BundleError(str(exc)) from None
    if config is None or variant not in config.variants:
        raise BundleError(f"{root / 'config.yaml'}: missing, or without the bundle's variant {variant!r}")
    _check_against_config(root, meta, config)
    clinical = "clinical" in config.modalities(variant)
    stage2 = config.variant(variant).stage2 != "none"
    score = config.variant_model(variant).fusion == "score"
    needed = (["config.yaml", "calibration.csv"] + [f"fold{k}.safetensors" for k in range(n_folds)]
              + ([f"clinical_fold{k}.skops" for k in range(n_folds)] if clinical else [])
              + ([f"fold{k}.stage2.skops" for k in range(n_folds)] if stage2 else [])
              + ([f"fold{k}.score.skops" for k in range(n_folds)] if score else []))
    predicted = _predicted_roi(config, config.modalities(variant))
    needed += [localiser_file(m, k) for m in predicted for k in range(n_folds)]
    onnx_files = [f"fold{k}.onnx" for k in range(n_folds)]
    with_onnx = any(name in meta["files"] for name in onnx_files)
    data = _verified(root, meta, needed + (onnx_files if with_onnx else []))
    for k in range(n_folds):
        _check_safetensors(root / f"fold{k}.safetensors", data[f"fold{k}.safetensors"])
    localisers = {m: [_load_localiser(root / localiser_file(m, k), data[localiser_file(m, k)],
                                      getattr(config.model, m).localiser) for k in range(n_folds)]
                  for m in predicted}
    learners = _load_learners(root, data, n_folds, "stage2", "stage-2 learner") if stage2 else None
    score_learners = _load_learners(root, data, n_folds, "score", "clinical learner") if score else None
    preprocessors = [_load_preprocessor(root / f"clinical_fold{k}.skops", data[f"clinical_fold{k}.skops"])
                     for k in range(n_folds)] if clinical else None
    networks = []
    for k in range(n_folds):
        try:
            networks.append(load_network(root / f"fold{k}.safetensors", config, variant,
                                         preprocessors[k] if preprocessors else None, label=f"fold {k}"))
        except RunFolderError as exc:
            raise BundleError(str(exc)) from None
    try:
        calibration = pd.read_csv(io.BytesIO(data["calibration.csv"]), dtype={"subject_id": str, "lesion_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{root / 'calibration.csv'}: not a readable CSV ({exc}); export the bundle again") from None
    missing = [c for c in _CALIBRATION_COLUMNS if c not in calibration.columns]
    lacking = sorted(set(range(n_folds)) - set(calibration.get("fold", pd.Series(dtype=int))))
    if missing or lacking:
        raise BundleError(f"{root / 'calibration.csv'}: missing column(s) {missing} or fold(s) {lacking}")
    if meta.get("breastfusion_version") != __version__:
        logger.info("bundle %s was exported by breastfusion %s; this is %s", root, meta.get("breastfusion_version"),
                    __version__)
    return Bundle(root=root, meta=meta, config=config, networks=networks, clinical_preprocessors=preprocessors,
                  calibration=calibration, stage2_learners=learners, score_learners=score_learners,
                  onnx_graphs=[data[name] for name in onnx_files] if with_onnx else None, localisers=localisers)


def localiser_file(modality: str, fold: int) -> str:
    """A bundle's file name for fold ``fold``'s lesion localiser of ``modality``."""
    return f"localiser_{modality}_fold{fold}.safetensors"


def _predicted_roi(config: ExperimentConfig, modalities) -> list[str]:
    """The image modalities of ``modalities`` that the config crops to a localiser's box (``roi: predicted``)."""
    return [m for m in IMAGE_MODALITIES if m in modalities and getattr(config.model, m).preprocess.get("roi")
            == "predicted"]


def _load_localiser(path: Path, data: bytes, cfg):
    """A bundle's localiser from its verified bytes (safetensors; a damaged or foreign file is refused, named)."""
    from safetensors.torch import load

    from breastfusion.experiment.localisation import LocalisationError, localiser_from_state

    _check_safetensors(path, data)
    try:
        return localiser_from_state(load(data), cfg, label=str(path))
    except LocalisationError as exc:
        raise BundleError(str(exc)) from None

"""A notebook API: one object that configures, runs, inspects and exports an experiment.

The CLI verbs ``run`` and ``export`` are a config file, a cohort folder and a run folder; from Python the same steps
were three imports and a path to remember (``run_experiment(load_cohort(d), load_config(y), out)``, then
``export_bundle(out, ...)``). :class:`Experiment` keeps the validated config and the run folder together, so a
notebook reads::

    import breastfusion as bf
    exp = bf.Experiment("configs/demo.yaml")      # or an ExperimentConfig, or a dict of config keys
    variants = exp.fit("my_cohort/")              # per-variant results, as in results.json
    bundle = exp.export("my-model")               # a loaded Bundle
    bundle.predict("new-cases/")

Nothing here adds behaviour: a run made through :class:`Experiment` is the same run folder ``breastfusion run``
writes, so every other verb (``explain``, ``compare``, ``export``, ``predict``) works on it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import ValidationError

from breastfusion.config import ConfigError, ExperimentConfig, format_validation_error, load_config
from breastfusion.experiment.run_folder import RunLayout

if TYPE_CHECKING:  # torch-heavy modules: imported only when used
    import pandas as pd

    from breastfusion.bundle import Bundle
    from breastfusion.data.manifest import Cohort
    from breastfusion.experiment.ensemble_recipe import EnsembleRecipe

__all__ = ["Experiment"]


def _as_config(config: ExperimentConfig | Mapping[str, Any] | str | Path | None) -> ExperimentConfig:
    """``config`` validated like a config file, so a dict or YAML path fails with the same dotted-key message."""
    if isinstance(config, ExperimentConfig):
        return config
    if config is None or isinstance(config, (str, Path)):
        return load_config(config)
    if isinstance(config, Mapping):
        try:
            return ExperimentConfig.model_validate(dict(config))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "config dict")) from None
    raise ConfigError(f"config: expected an ExperimentConfig, a dict of config keys or a YAML path, got "
                      f"{type(config).__name__}")


def _write_cohort(cohort: Cohort, folder: Path) -> Path:
    """A validated in-memory cohort (:func:`~breastfusion.data.manifest.cohort_from_frame`, image paths absolute)
    written as the cohort folder ``folder``.

    A run identifies its cohort by the sha256 of a ``manifest.csv`` on disk (reloading the run, e.g. to explain
    it, reads the cohort), so an in-memory cohort is written where the run folder keeps it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cohort.manifest.to_csv(folder / "manifest.csv", index=False)
    if len(cohort.clinical):
        cohort.clinical.to_csv(folder / "clinical.csv", index=False)
    elif (folder / "clinical.csv").exists():
        (folder / "clinical.csv").unlink()
    return folder


class Experiment:
    """An experiment configuration and, once fitted, its run folder.

    Args:
        config: an :class:`~breastfusion.config.ExperimentConfig`, a dict of config keys (the YAML's structure,
            unknown keys are errors), a path to an experiment YAML or an ensemble recipe (members fitted into
            ``out/members/NAME``, their ensemble in ``out``: :mod:`breastfusion.experiment.ensemble_recipe`), or
            ``None`` for the defaults.

    Raises:
        ConfigError: an unreadable YAML, an unknown key or a bad value (named by its dotted key).

    Attributes:
        config: the validated configuration (after :meth:`fit`, with ``manifest`` set to the cohort fitted on).
    """

    def __init__(self, config: ExperimentConfig | Mapping[str, Any] | str | Path | None = None) -> None:
        from breastfusion.experiment.ensemble_recipe import is_ensemble_recipe, load_ensemble_recipe

        #: an ensemble recipe's members (``None`` for one experiment config); :meth:`fit` fits and ensembles them
        self.recipe: EnsembleRecipe | None = None
        if isinstance(config, (str, Path)) and is_ensemble_recipe(config):
            self.recipe = load_ensemble_recipe(config)
            first = next(iter(self.recipe.members.values()))
            config = first.model_copy(update={"name": self.recipe.name})
        self.config: ExperimentConfig = _as_config(config)
        self._run_dir: Path | None = None
        self._results: dict[str, Any] | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None  # owns the run folder when fit(out=None)
        self._outside_root = False  # fitted on a DataFrame: the cohort's images lie outside its folder

    def __repr__(self) -> str:
        state = f"run_dir={str(self._run_dir)!r}" if self._run_dir else "not fitted"
        return f"Experiment(name={self.config.name!r}, variants={list(self.config.variants)}, {state})"

    def fit(self, cohort: Cohort | pd.DataFrame | str | Path | None = None, out: str | Path | None = None, *,
            clinical: pd.DataFrame | None = None, root: str | Path | None = None) -> dict[str, Any]:
        """Cross-validate every variant on ``cohort`` and write the run folder ``out``.

        Args:
            cohort: a loaded :class:`~breastfusion.data.manifest.Cohort`, a cohort folder or its manifest CSV
                (default: the config's ``manifest``), or a manifest DataFrame (the columns of ``manifest.csv``),
                written with ``clinical`` as the cohort folder ``out/cohort/`` (its images stay where they are).
            out: the run folder (created). ``None``: a temporary folder owned by this object, removed when
                it is garbage-collected, so :meth:`export` before letting it go.
            clinical: with a manifest DataFrame, the clinical table (``subject_id`` + one column per variable).
            root: with a manifest DataFrame, the folder its relative image paths resolve against (default: the
                working directory).

        Returns:
            Per-variant results: ``results.json``'s ``"variants"`` (the full content is :attr:`results`).

        Raises:
            ConfigError: no cohort given and no ``manifest`` in the config.
            ManifestError, FileNotFoundError: the cohort (folder or DataFrame) breaks the manifest contract.
            TypeError: ``clinical`` or ``root`` without a manifest DataFrame.
        """
        import pandas as pd

        from breastfusion.data.manifest import Cohort, cohort_from_frame, load_cohort
        from breastfusion.experiment.run import run_experiment

        if cohort is None:
            if self.config.manifest is None:
                raise ConfigError("fit: no cohort; pass a cohort folder or set `manifest` in the config")
            cohort = self.config.manifest
        is_frame = isinstance(cohort, pd.DataFrame)
        if (clinical is not None or root is not None) and not is_frame:
            raise TypeError("fit: clinical= and root= go with a manifest DataFrame; a cohort folder has its own "
                            "clinical.csv and is its own root")
        if is_frame:  # validated before anything is written (the same conversion Bundle.predict uses)
            cohort = cohort_from_frame(cohort, clinical, root=root, allow_outside_root=True)
        if out is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="breastfusion-run-")
            out = Path(self._tmp.name) / "run"
        self._outside_root = is_frame
        if is_frame:
            cohort = load_cohort(_write_cohort(cohort, RunLayout(Path(out)).cohort), allow_outside_root=True)
        elif not isinstance(cohort, Cohort):
            cohort = load_cohort(Path(cohort).resolve())
        # Record where the cohort is, so reloading the run (explain) finds it from any working directory.
        located = {"manifest": Path(cohort.root).resolve()}
        self.config = self.config.model_copy(update=located)
        if self.recipe is not None:
            from breastfusion.experiment.ensemble_recipe import run_ensemble_recipe

            self.recipe = self.recipe.model_copy(update={"members": {
                name: member.model_copy(update=located) for name, member in self.recipe.members.items()}})
            self._results = run_ensemble_recipe(cohort, self.recipe, out)
        else:
            self._results = run_experiment(cohort, self.config, out)
        self._run_dir = Path(out)
        return self._results["variants"]

    def _fitted(self) -> Path:
        if self._run_dir is None:
            raise RuntimeError("this Experiment is not fitted yet: call .fit(cohort) first")
        return self._run_dir

    @property
    def run_dir(self) -> Path:
        """The run folder of the last :meth:`fit` (RuntimeError before)."""
        return self._fitted()

    @property
    def results(self) -> dict[str, Any]:
        """The whole ``results.json`` of the last :meth:`fit`: variants, cohort counts, oracle AUCs, versions."""
        self._fitted()
        if self._results is None:  # pragma: no cover - set together with the run folder
            self._results = json.loads(RunLayout(self.run_dir).results.read_text())
        return self._results

    @property
    def predictions(self) -> pd.DataFrame:
        """Out-of-fold predictions (``predictions.csv``): variant, repeat, fold, subject_id, lesion_id, y, prob,
        modalities_used."""
        import pandas as pd

        return pd.read_csv(RunLayout(self.run_dir).predictions, dtype={"subject_id": str, "lesion_id": str})

    def export(self, out: str | Path, *, variant: str | None = None, onnx: bool = False) -> Bundle:
        """Write one variant of the run as a bundle folder and load it back (verified) for prediction.

        Args:
            out: the bundle folder to create (absent or empty).
            variant: the variant (default: the run's reference variant).
            onnx: also write ONNX graphs (``predict --runtime onnx``).

        Returns:
            The loaded :class:`~breastfusion.bundle.Bundle`; ``.predict(cohort_dir)`` scores new cases.

        Raises:
            RuntimeError: not fitted yet.
            BundleError: unknown variant, or ``out`` not empty.
        """
        from breastfusion.bundle import export_bundle, load_bundle

        return load_bundle(export_bundle(self.run_dir, out, variant=variant, onnx=onnx,
                                         allow_outside_root=self._outside_root))

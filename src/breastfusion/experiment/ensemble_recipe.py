"""Ensemble recipes: one YAML that names two or more experiment configs, fitted and ensembled by one command.

A recipe is what ``breastfusion run`` of each member config followed by ``breastfusion ensemble`` of their run
folders gives, as one file and one command, so a recipe that needs two networks can be a shipped default::

    # configs/bus_clinical_pair.yaml
    name: bus_clinical_pair
    members:                                # member name -> experiment config, relative to this file
      whole_frame: bus_clinical.yaml
      localised: bus_clinical_localised.yaml

``breastfusion run configs/bus_clinical_pair.yaml --manifest DIR --out RUN`` cross-validates each member into
``RUN/members/NAME`` (ordinary run folders: ``explain``, ``compare`` and ``export`` work on them) and writes the
ensemble (the mean logit of the members' out-of-fold scores, fold by fold: :func:`~breastfusion.experiment.
run_ensemble.ensemble_runs`) into ``RUN`` itself, so ``export RUN`` makes an ensemble bundle. ``--resume``
continues each member as a single run resumes.

The members must share the cohort's folds and calibration lesions (``cv``, ``training.val_fraction``) and the
``evaluation`` settings; :func:`load_ensemble_recipe` checks that before anything is trained, not after hours of
training, and names the member and key that differ.

Members that localise the lesion with the same localiser (``preprocess.roi: predicted``, equal ``localiser``
settings and ``training.seed``) would fit the same fold localisers on the same fitting images with the same seeds;
a member starts from a copy of the localisers another member already fitted instead of fitting them again
(:func:`share_localisers`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from breastfusion.config import (ConfigError, ExperimentConfig, first_difference, format_validation_error,
                                 load_config, read_yaml_mapping, select_variants)
from breastfusion.experiment.run_folder import RunLayout

if TYPE_CHECKING:  # torch-heavy modules: imported only when a recipe runs
    from rich.progress import Progress

    from breastfusion.data.manifest import Cohort

__all__ = ["RECIPE_KEY", "EnsembleRecipe", "is_ensemble_recipe", "load_ensemble_recipe", "member_dir",
           "run_ensemble_recipe", "share_localisers"]

#: The top-level key that makes a YAML an ensemble recipe instead of an experiment config.
RECIPE_KEY = "members"

#: Keys the members must agree on for their out-of-fold scores to be averaged lesion by lesion.
_SHARED = ("cv", "evaluation")


class _RecipeFile(BaseModel):
    """The recipe YAML as written (member paths still relative to the file)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    members: dict[str, Path]
    manifest: Path | None = None

    @field_validator("members")
    @classmethod
    def _two_or_more_named(cls, value: dict[str, Path]) -> dict[str, Path]:
        if len(value) < 2:
            raise ValueError(f"an ensemble needs two or more member configs, got {len(value)}")
        bad = [name for name in value if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
        if bad:
            raise ValueError(f"member names become folder names: letters, digits and _ only, got {bad}")
        return value


class EnsembleRecipe(BaseModel):
    """A loaded recipe: its name and each member's validated config (overrides applied, in the file's order)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    source: Path
    members: dict[str, ExperimentConfig]

    @property
    def manifest(self) -> Path | None:
        """The cohort every member runs on (members share it: see :func:`load_ensemble_recipe`)."""
        return next(iter(self.members.values())).manifest

    def with_variants(self, names: list[str]) -> "EnsembleRecipe":
        """The recipe with every member cut to the variants ``names`` (``--variants``)."""
        return self.model_copy(update={"members": {m: select_variants(c, names) for m, c in self.members.items()}})


def is_ensemble_recipe(path: str | Path | None) -> bool:
    """Whether the YAML at ``path`` is an ensemble recipe (a mapping with ``members``), not an experiment config."""
    if path is None or not Path(path).is_file():
        return False
    return RECIPE_KEY in read_yaml_mapping(path)


def _check_shared(members: dict[str, ExperimentConfig], source: Path) -> None:
    """Members that would fail to ensemble after training are refused now, naming the key that differs."""
    (first_name, first), *others = members.items()
    for name, config in others:
        if list(config.variants) != list(first.variants):
            raise ConfigError(f"{source}: members {first_name!r} and {name!r} have different variants "
                              f"({list(first.variants)} vs {list(config.variants)}); the ensemble averages each "
                              "variant's scores, so give the members the same variant names")
        for section in _SHARED:
            a, b = getattr(first, section), getattr(config, section)
            key = first_difference(a, b)
            if key:
                raise ConfigError(f"{source}: members {first_name!r} and {name!r} differ in {section}.{key} "
                                  f"({getattr(a, key)!r} vs {getattr(b, key)!r}); an ensemble averages each "
                                  "lesion's scores on the same folds, so the members need the same cv and "
                                  "evaluation settings")
        if first.training.val_fraction != config.training.val_fraction:
            raise ConfigError(f"{source}: members {first_name!r} and {name!r} differ in training.val_fraction "
                              f"({first.training.val_fraction!r} vs {config.training.val_fraction!r}); each fold's "
                              "threshold is chosen on calibration lesions the members must share")
        if first.manifest != config.manifest:
            raise ConfigError(f"{source}: members {first_name!r} and {name!r} name different manifests "
                              f"({first.manifest} vs {config.manifest}); give --manifest DIR or set `manifest:` "
                              "in the recipe")


def load_ensemble_recipe(path: str | Path, **overrides: Any) -> EnsembleRecipe:
    """Read a recipe and validate each member config, with ``overrides`` (top-level config keys, as
    :func:`~breastfusion.config.load_config` takes them: ``manifest``, ``cache``...) applied to every member.

    Raises:
        ConfigError: bad YAML or keys (dotted key named), a member file that is missing or is itself a recipe,
            a member's invalid config (its file named), or members whose folds or evaluation would differ.
    """
    source = Path(path)
    data = read_yaml_mapping(source)
    try:
        recipe = _RecipeFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(source))) from None
    if recipe.manifest is not None and overrides.get("manifest") is None:
        overrides = {**overrides, "manifest": (source.parent / recipe.manifest)}
    members: dict[str, ExperimentConfig] = {}
    for name, relative in recipe.members.items():
        member_path = source.parent / relative
        if not member_path.is_file():
            raise ConfigError(f"{source}: member {name!r}: {member_path} not found (paths are relative to the "
                              "recipe file)")
        if is_ensemble_recipe(member_path):
            raise ConfigError(f"{source}: member {name!r}: {member_path} is itself an ensemble recipe; list its "
                              "member configs instead")
        members[name] = load_config(member_path, **overrides)
    _check_shared(members, source)
    return EnsembleRecipe(name=recipe.name, source=source, members=members)


def member_dir(out: str | Path, member: str) -> Path:
    """Where a recipe run keeps the run folder of ``member``."""
    return Path(out) / "members" / member


def _localisers(config: ExperimentConfig) -> dict[tuple[str, str], int]:
    """(modality, localiser tag) of each ``roi: predicted`` modality -> the training seed its fold localisers'
    seeds derive from."""
    from breastfusion.data.manifest import IMAGE_MODALITIES
    from breastfusion.experiment.localisation import localiser_tag

    return {(modality, localiser_tag(getattr(config.model, modality).localiser)): config.training.seed
            for modality in IMAGE_MODALITIES if getattr(config.model, modality).preprocess.get("roi") == "predicted"}


def share_localisers(source: tuple[ExperimentConfig, Path], target: tuple[ExperimentConfig, Path]) -> list[Path]:
    """Copy the fold localisers of the member run ``source`` (config, folder) into the member run ``target`` where
    they are the ones ``target`` would fit: the same modality and localiser settings (their tag) and the same
    ``training.seed`` (their seeds); the folds and fitting images are the same in every member of a recipe
    (:func:`load_ensemble_recipe` checks ``cv`` and ``training.val_fraction``). Files ``target`` already has are
    kept. Returns the files copied."""
    wanted = _localisers(target[0])
    copied = []
    for (modality, tag), seed in _localisers(source[0]).items():
        if wanted.get((modality, tag)) != seed:
            continue
        origin = RunLayout(source[1]).checkpoints.localiser_dir(modality, tag)
        destination = RunLayout(target[1]).checkpoints.localiser_dir(modality, tag)
        for file in sorted(origin.glob("*.safetensors")):
            if not (destination / file.name).exists():
                destination.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, destination / file.name)
                copied.append(destination / file.name)
    return copied


def run_ensemble_recipe(cohort: Cohort, recipe: EnsembleRecipe, out: str | Path, *,
                        progress: Progress | None = None) -> dict[str, Any]:
    """Cross-validate each member of ``recipe`` on ``cohort`` into ``out/members/NAME``, then ensemble them into
    ``out``.

    A member folder that already holds checkpoints continues where it stopped (finished folds are kept), provided
    its recorded config is the member's; so rerunning an interrupted recipe retrains nothing that was finished.
    A member whose fold localisers another member already fitted starts from copies of them
    (:func:`share_localisers`).

    Returns:
        The ensemble's ``results.json`` (see :func:`~breastfusion.experiment.run_ensemble.ensemble_runs`).

    Raises:
        ConfigError: a member folder that holds another experiment's run.
        EnsembleError: the members' runs cannot be ensembled (the message says where).
    """
    from breastfusion.execution import same_experiment
    from breastfusion.experiment.run import run_experiment
    from breastfusion.experiment.run_ensemble import ensemble_runs

    out = Path(out)
    folders = []
    for name, config in recipe.members.items():
        folder = member_dir(out, name)
        recorded = RunLayout(folder).config
        if recorded.is_file() and not same_experiment(load_config(recorded), config):
            raise ConfigError(f"{folder} holds a run of another configuration than member {name!r} of "
                              f"{recipe.source}; choose another --out")
        for other, other_config in recipe.members.items():
            if other == name:
                continue
            copied = share_localisers((other_config, member_dir(out, other)), (config, folder))  # none if not run
            if copied and progress is not None:
                progress.console.print(f"member {name}: {len(copied)} fold localiser(s) copied from member {other} "
                                       "(the same settings, folds and seeds)")
        run_experiment(cohort, config, folder, progress=progress)
        folders.append(folder.resolve())
    return ensemble_runs(folders, out, name=recipe.name,
                         variants=list(next(iter(recipe.members.values())).variants))

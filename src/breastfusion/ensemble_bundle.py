"""A fitted ensemble of runs that can be applied to new cases: member bundles and the ensemble's fold calibration.

``breastfusion ensemble`` averages finished runs' logits fold by fold
(:mod:`breastfusion.experiment.run_ensemble`); ``breastfusion export`` of that folder writes an *ensemble bundle*,
and :func:`~breastfusion.bundle.load_bundle` reads it back as an :class:`EnsembleBundle`, which predicts as a
:class:`~breastfusion.bundle.Bundle` does: fold ``k``'s lesion score is the mean logit of the members' fold ``k``
networks, scored (aggregation, recalibration, thresholds, conformal sets) against the ensemble's fold ``k``
calibration scores, exactly as the ensemble run scored its held-out subjects; then averaged over folds.

Files:

* ``ensemble.json``: format, versions, variant, modalities, ``n_folds``, ``combine``, the ensemble's out-of-fold
  ``metrics``, ``evaluation``, the member folders and the sha256 of every other file (each member's
  ``bundle.json`` included, so a member swapped for another bundle is refused);
* ``config.yaml``: the ensemble run's configuration (``evaluation`` scores the subjects);
* ``calibration.csv``: the ensemble's fold calibration scores (mean logits), with anonymous ids;
* ``member0/``, ``member1/``, ...: each member run's bundle of the same variant, a complete bundle loaded and
  verified as any other (so never a pickle).

The ensemble folder holds exactly these; anything else (a file, a folder, a link) is refused, naming it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from breastfusion import __version__
from breastfusion.bundle import BundleScoring, sha256_hex
from breastfusion.bundle_meta import BundleError
from breastfusion.config import ConfigError, ExperimentConfig, load_config, reference_variant
from breastfusion.data.manifest import MODALITIES, Cohort

__all__ = ["ENSEMBLE_FILE", "ENSEMBLE_FORMAT", "EnsembleBundle", "export_ensemble_bundle", "load_ensemble_bundle",
           "is_ensemble_bundle"]

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = "breastfusion-ensemble-bundle"
ENSEMBLE_FORMAT_VERSION = 1
_PARTIAL = ENSEMBLE_FILE + ".partial"


@dataclass
class EnsembleBundle(BundleScoring):
    """A loaded ensemble bundle (build with :func:`~breastfusion.bundle.load_bundle`); ``score`` and ``predict``
    are a bundle's (:class:`~breastfusion.bundle.BundleScoring`), against the ensemble's own calibration.

    Attributes:
        root: the bundle folder.
        meta: ``ensemble.json``.
        config: the ensemble run's configuration.
        members: the member bundles, in order.
        calibration: each fold's calibration lesion scores of the ensemble (``fold, subject_id, lesion_id, y,
            prob, split``).
    """

    root: Path
    meta: dict[str, Any] = field(repr=False)
    config: ExperimentConfig = field(repr=False)
    members: list[Any] = field(repr=False)
    calibration: pd.DataFrame = field(repr=False)

    @property
    def variant(self) -> str:
        return self.meta["variant"]

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta["modalities"])

    @property
    def n_folds(self) -> int:
        return int(self.meta["n_folds"])

    @property
    def clinical_preprocessors(self):
        """The first clinical member's fold preprocessors (what a case's clinical values are checked against)."""
        return next((m.clinical_preprocessors for m in self.members if m.clinical_preprocessors is not None), None)

    def predict_lesions(self, cohort: Cohort | pd.DataFrame | str | Path | None = None, *,
                        images: Mapping[str, Any] | None = None,
                        clinical: pd.DataFrame | Mapping[str, Any] | None = None, root: str | Path | None = None,
                        batch_size: int = 64, cache: bool = False, runtime: str = "torch") -> pd.DataFrame:
        """Fold ``k``'s P(malignant) per lesion: the mean logit of the members' fold ``k`` networks (see
        :func:`breastfusion.predict.predict_lesions` for the arguments and columns). A lesion a member cannot
        score (none of its modalities) gets the mean over the members that can."""
        from breastfusion.experiment.run_ensemble import average_logits

        frames = [m.predict_lesions(cohort, images=images, clinical=clinical, root=root, batch_size=batch_size,
                                    cache=cache, runtime=runtime) for m in self.members]
        key = ["fold", "subject_id", "lesion_id"]
        first = frames[0]
        labels = [c for c in ("y", "label") if c in first.columns]
        rows = pd.concat([f[key + labels] for f in frames]).drop_duplicates(key)
        rows = rows.sort_values(["fold"], kind="stable").reset_index(drop=True)
        probs, used = [], []
        for f in frames:
            indexed = f.set_index(key)
            probs.append(indexed["prob"].reindex(pd.MultiIndex.from_frame(rows[key])).to_numpy())
            used.append(indexed["modalities_used"].reindex(pd.MultiIndex.from_frame(rows[key])).fillna(""))
        out = rows[key].copy()
        out["prob"] = average_logits(np.column_stack(probs))
        out["modalities_used"] = [";".join(m for m in MODALITIES if any(m in str(u).split(";") for u in parts))
                                  for parts in zip(*used)]
        for column in labels:
            out[column] = rows[column].to_numpy()
        return out


def export_ensemble_bundle(run_dir: str | Path, out: str | Path, *, variant: str | None = None, onnx: bool = False,
                           allow_outside_root: bool = False) -> Path:
    """Export an ensemble run (``breastfusion ensemble``) as an ensemble bundle: each member run's bundle of
    ``variant`` (:func:`~breastfusion.bundle.export_bundle`) and the ensemble's calibration and metrics.

    Raises:
        BundleError: an unknown variant, ``out`` not empty, a member run that cannot be exported (its message),
            or members whose bundles disagree with the ensemble (variant, folds).
    """
    from breastfusion.bundle import anonymise_calibration, export_bundle, fresh_partial
    from breastfusion.experiment.run_artifacts import RunFolderError
    from breastfusion.experiment.run_folder import RunLayout

    root, out = Path(run_dir), Path(out)
    layout = RunLayout(root)
    config = load_config(layout.config)
    variant = variant or reference_variant(config)
    if variant not in config.variants:
        raise BundleError(f"unknown variant {variant!r}; this ensemble has {list(config.variants)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists and is not an empty folder; choose another --out or remove it")
    ensemble = json.loads(layout.ensemble.read_text())
    results = json.loads(layout.results.read_text())
    calibration = pd.read_csv(layout.calibration, dtype={"subject_id": str, "lesion_id": str})
    calibration = calibration[(calibration["variant"] == variant)
                              & (calibration.get("repeat", 0) == 0)].reset_index(drop=True)
    partial = fresh_partial(out)
    try:
        names = []
        for j, member in enumerate(ensemble["members"]):
            name = f"member{j}"
            try:
                export_bundle(member["run"], partial / name, variant=variant, onnx=onnx,
                              allow_outside_root=allow_outside_root)
            except (BundleError, RunFolderError) as exc:
                raise BundleError(f"member run {member['run']}: {exc}") from None
            names.append(name)
        shutil.copyfile(layout.config, partial / "config.yaml")
        anonymise_calibration(calibration).to_csv(partial / "calibration.csv", index=False)
        entry = results["variants"][variant]
        files = {n: sha256_hex((partial / n).read_bytes()) for n in ("config.yaml", "calibration.csv")}
        files |= {f"{n}/bundle.json": sha256_hex((partial / n / "bundle.json").read_bytes()) for n in names}
        meta = {
            "format": ENSEMBLE_FORMAT, "format_version": ENSEMBLE_FORMAT_VERSION, "breastfusion_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_name": config.name, "run_created": results.get("created"), "variant": variant,
            "modalities": list(config.modalities(variant)), "n_folds": config.n_folds,
            "combine": ensemble.get("combine"), "members": names,
            "member_runs": [str(m["run"]) for m in ensemble["members"]],
            "manifest_sha256": results.get("manifest_sha256"),
            "metrics": {"level": "subject, out-of-fold", "auc": entry.get("auc"), "auc_ci": entry.get("auc_ci"),
                        "threshold_metrics": entry.get("threshold_metrics"),
                        "n_subjects": entry.get("n_subjects"), "n_malignant": entry.get("n_malignant")},
            "evaluation": config.evaluation.model_dump(mode="json"),
            "files": files,
        }
        (partial / _PARTIAL).write_text(json.dumps(meta, indent=2))
        if out.exists():
            out.rmdir()
        partial.rename(out)
        os.replace(out / _PARTIAL, out / ENSEMBLE_FILE)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def load_ensemble_bundle(path: str | Path) -> EnsembleBundle:
    """Read an ensemble bundle, verifying its files and loading each member as a bundle.

    Raises:
        BundleError: not an ensemble bundle or a newer format, a missing, unlisted or changed file (naming it),
            an interrupted export, or a member that fails to load or disagrees with the ensemble.
    """
    from breastfusion.bundle import read_plain, load_bundle

    root = Path(path)
    if not (root / ENSEMBLE_FILE).exists():
        if (root / _PARTIAL).exists():
            raise BundleError(f"{root}: the export that wrote this folder was interrupted ({_PARTIAL} is there, "
                              f"{ENSEMBLE_FILE} is not); remove the folder and export the bundle again")
        raise BundleError(f"{root} is not an ensemble bundle: {ENSEMBLE_FILE} is missing")
    try:
        meta = json.loads(read_plain(root, ENSEMBLE_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{root / ENSEMBLE_FILE}: not valid JSON ({exc}); export the bundle again") from None
    if not isinstance(meta, dict) or meta.get("format") != ENSEMBLE_FORMAT:
        raise BundleError(f"{root / ENSEMBLE_FILE}: not a breastfusion ensemble bundle (format "
                          f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > ENSEMBLE_FORMAT_VERSION:
        raise BundleError(f"{root / ENSEMBLE_FILE}: format version {meta.get('format_version')!r}; this "
                          f"breastfusion ({__version__}) reads up to {ENSEMBLE_FORMAT_VERSION}: upgrade breastfusion")
    members = meta.get("members")
    files = meta.get("files")
    if (not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) and m.isidentifier()
                                                                      for m in members)
            or not isinstance(files, dict) or meta.get("variant") is None or meta.get("n_folds") is None
            or any(m not in MODALITIES for m in meta.get("modalities") or ["?"])):
        raise BundleError(f"{root / ENSEMBLE_FILE}: members, files, variant, modalities and n_folds are required "
                          "(two or more member folders); export the bundle again")
    expected = {"config.yaml", "calibration.csv", *(f"{m}/bundle.json" for m in members)}
    if set(files) != expected:
        raise BundleError(f"{root / ENSEMBLE_FILE}: lists {sorted(files)}, expected {sorted(expected)}; export the "
                          "bundle again")
    allowed = {ENSEMBLE_FILE, "config.yaml", "calibration.csv", *members}
    for entry in sorted(root.iterdir()):
        if entry.is_symlink() or entry.name not in allowed or (entry.is_dir() != (entry.name in members)):
            raise BundleError(f"{entry}: not part of this ensemble bundle (it holds {sorted(allowed)}); remove it, or "
                              "export the bundle again")
    data = {}
    for name, digest in files.items():
        folder, _, file = name.rpartition("/")
        data[name] = read_plain(root / folder if folder else root, file)
        if sha256_hex(data[name]) != digest:
            raise BundleError(f"{root / name}: sha256 differs from the one recorded in {ENSEMBLE_FILE}; the file was "
                              "changed or damaged after export: export the bundle again")
    try:
        config = load_config(root / "config.yaml")
    except ConfigError as exc:
        raise BundleError(str(exc)) from None
    loaded = []
    for name in members:
        member = load_bundle(root / name)
        if member.variant != meta["variant"] or member.n_folds != meta["n_folds"]:
            raise BundleError(f"{root / name}: variant {member.variant!r} with {member.n_folds} folds, but the "
                              f"ensemble is of {meta['variant']!r} with {meta['n_folds']}; export the bundle again")
        loaded.append(member)
    calibration = pd.read_csv(io.BytesIO(data["calibration.csv"]), dtype={"subject_id": str, "lesion_id": str})
    lacking = sorted(set(range(int(meta["n_folds"]))) - set(calibration.get("fold", pd.Series(dtype=int))))
    if lacking:
        raise BundleError(f"{root / 'calibration.csv'}: no calibration scores for fold(s) {lacking}")
    return EnsembleBundle(root=root, meta=meta, config=config, members=loaded, calibration=calibration)


def is_ensemble_bundle(path: str | Path) -> bool:
    """Whether ``path`` is (or was being exported as) an ensemble bundle folder."""
    root = Path(path)
    return (root / ENSEMBLE_FILE).exists() or (root / _PARTIAL).exists()


"""The manifest contract: one row per image, plus a clinical table keyed by subject.

A *manifest folder* holds ``manifest.csv`` and, optionally, ``clinical.csv``.
Image paths in the manifest are relative to that folder (absolute paths are
accepted) and must stay inside it unless ``allow_outside_root`` is set.

``manifest.csv`` columns (required):

============  =====================================================
subject_id    the patient; the unit of grouping in cross-validation
lesion_id     the lesion; the unit of prediction
modality      ``mammography`` or ``ultrasound``
view          e.g. ``CC``, ``MLO``, ``frame1`` (free text, may be empty)
path          the image file
label         ``benign`` or ``malignant``
============  =====================================================

Extra columns are kept. New cases to predict (``breastfusion predict``) may leave
``label`` empty or omit the column (``require_labels=False``); everything else is
checked as for training. ``clinical.csv`` has a ``subject_id`` column, unique,
and one column per clinical variable; a subject absent from it has no clinical
data (the clinical modality is then missing for that subject).

Both files are read as UTF-8, or as cp1252 with a warning (:mod:`breastfusion.data.tables`).
Clinical numbers must be finite: ``inf`` / ``-inf`` are refused (an empty cell is a missing
value, which training imputes). Validation collects every problem before raising, and each message names the
file, the line (as a spreadsheet shows it: the header is line 1), the column,
what was found and what was expected.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from breastfusion.data.tables import read_table

if TYPE_CHECKING:
    from breastfusion.data.readers import ImageData

__all__ = [
    "MANIFEST_FILENAME",
    "CLINICAL_FILENAME",
    "MANIFEST_COLUMNS",
    "MODALITIES",
    "IMAGE_MODALITIES",
    "LABELS",
    "ManifestError",
    "Cohort",
    "cohort_from_frame",
    "load_cohort",
    "validate_manifest",
    "validate_clinical",
]

MANIFEST_FILENAME = "manifest.csv"
CLINICAL_FILENAME = "clinical.csv"
MANIFEST_COLUMNS = ("subject_id", "lesion_id", "modality", "view", "path", "label")
IMAGE_MODALITIES = ("mammography", "ultrasound")
MODALITIES = (*IMAGE_MODALITIES, "clinical")
LABELS = ("benign", "malignant")
_MAX_LISTED = 20


class ManifestError(ValueError):
    """A manifest or clinical table breaks the contract; ``problems`` lists every finding."""

    def __init__(self, file: Path, problems: list[str]):
        self.file = Path(file)
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        super().__init__(f"{file}: {len(problems)} problem(s)\n{listed}{more}")


@dataclass
class Cohort:
    """A validated manifest folder, or a cohort held in memory.

    Attributes:
        root: the folder; image paths resolve against it.
        manifest: one row per image, with ``path`` made absolute.
        clinical: one row per subject (``subject_id`` + variables), possibly empty.
        decoded: images already decoded, keyed by their manifest ``path`` (then a name, not a file): a case
            predicted from memory (:func:`breastfusion.data.in_memory.case_cohort`) is never written to disk,
            so its rows are read from here instead of from files. ``None`` for a folder.
    """

    root: Path
    manifest: pd.DataFrame
    clinical: pd.DataFrame
    decoded: dict[str, ImageData] | None = field(default=None, repr=False)

    @property
    def lesions(self) -> pd.DataFrame:
        """One row per lesion: ``lesion_id``, ``subject_id``, ``label``, ``y`` (0/1) and ``group``.

        ``group`` is the cross-validation group: the manifest's ``cv_group`` column where
        present (e.g. subjects sharing near-duplicate images, from ``data check --group-duplicates``),
        else the subject. A lesion without a label (``require_labels=False``) has ``y`` 0.
        """
        columns = ["lesion_id", "subject_id", "label"] + (["cv_group"] if "cv_group" in self.manifest else [])
        lesions = self.manifest.drop_duplicates("lesion_id")[columns].reset_index(drop=True)
        if "cv_group" in lesions:
            lesions = lesions.rename(columns={"cv_group": "group"})
            lesions["group"] = lesions["group"].fillna(lesions["subject_id"]).astype(str)
        else:
            lesions["group"] = lesions["subject_id"]
        lesions["y"] = (lesions["label"] == "malignant").astype(int)
        return lesions

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present for at least one subject, in canonical order."""
        have = set(self.manifest["modality"])
        if len(self.clinical.columns) > 1 and len(self.clinical):
            have.add("clinical")
        return tuple(m for m in MODALITIES if m in have)


def _line(index: int) -> int:
    return index + 2  # header is line 1, first data row is line 2


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def validate_manifest(
    frame: pd.DataFrame, *, root: Path, file: Path, check_files: bool = True, allow_outside_root: bool = False,
    require_labels: bool = True,
) -> pd.DataFrame:
    """Check a manifest frame against the contract and return it with absolute paths.

    Args:
        frame: the manifest as read (all columns as strings).
        root: folder that relative paths resolve against.
        file: the manifest's path, for messages.
        check_files: also check that every image file exists.
        allow_outside_root: accept paths that resolve outside ``root``.
        require_labels: every row needs a ``label``; ``False`` (new cases to predict) accepts an empty or
            absent ``label`` column, but a lesion is then labelled on all its rows or on none.

    Raises:
        ManifestError: listing every problem found.
    """
    if not require_labels and "label" not in frame.columns:
        frame = frame.assign(label=pd.Series(pd.NA, index=frame.index, dtype=object))
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(file, [f"missing column(s) {missing}; expected columns {list(MANIFEST_COLUMNS)}, "
                                   f"found {list(frame.columns)}"])
    problems: list[str] = []
    for column in ("subject_id", "lesion_id", "path", "modality") + (("label",) if require_labels else ()):
        for i in frame.index[_blank(frame[column])]:
            problems.append(f"line {_line(i)}, column '{column}': empty; expected a value")
    for column, allowed in (("modality", IMAGE_MODALITIES), ("label", LABELS)):
        bad = ~frame[column].isin(allowed) & ~_blank(frame[column])
        for i in frame.index[bad]:
            problems.append(f"line {_line(i)}, column '{column}': got {frame.at[i, column]!r}; "
                            f"expected one of {list(allowed)}")

    root_resolved = root.resolve()
    absolute = []
    for i, rel in frame["path"].items():
        if _blank(pd.Series([rel])).iloc[0]:
            absolute.append("")
            continue
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        resolved = path.resolve()
        if not allow_outside_root and not resolved.is_relative_to(root_resolved):
            problems.append(f"line {_line(i)}, column 'path': {rel!r} resolves outside the manifest folder "
                            f"{root_resolved}; move the file inside it or pass allow_outside_root")
        elif check_files and not resolved.is_file():
            problems.append(f"line {_line(i)}, column 'path': file not found: {resolved}")
        absolute.append(str(resolved))

    for path, group in frame[frame["path"].duplicated(keep=False) & ~_blank(frame["path"])].groupby("path"):
        problems.append(f"lines {[_line(i) for i in group.index]}, column 'path': {path!r} listed more than once")
    # Invalid labels are reported above; the consistency checks look at the rows with a usable label.
    checked = frame[frame["label"].isin(LABELS) | (_blank(frame["label"]) & (not require_labels))]
    for lesion, group in checked.groupby("lesion_id"):
        labels = group["label"][~_blank(group["label"])]
        if labels.nunique() > 1:
            problems.append(f"lesion_id {lesion!r} (lines {[_line(i) for i in group.index]}): labels "
                            f"{sorted(labels.unique())} disagree; expected one label per lesion")
        elif 0 < len(labels) < len(group):
            problems.append(f"lesion_id {lesion!r} (lines {[_line(i) for i in group.index]}): labelled on some "
                            "rows and empty on others; expected the label on all of the lesion's rows or none")
        if group["subject_id"].nunique() > 1:
            problems.append(f"lesion_id {lesion!r} (lines {[_line(i) for i in group.index]}): belongs to subjects "
                            f"{sorted(group['subject_id'].unique())}; expected one subject per lesion")
    if problems:
        raise ManifestError(file, problems)
    out = frame.copy()
    out["path"] = absolute
    out["view"] = out["view"].fillna("")
    return out


def validate_clinical(frame: pd.DataFrame, *, file: Path) -> pd.DataFrame:
    """Check a clinical table: a unique, non-empty ``subject_id`` column and finite numbers.

    Raises:
        ManifestError: listing every problem found.
    """
    if "subject_id" not in frame.columns:
        raise ManifestError(file, [f"missing column 'subject_id'; found {list(frame.columns)}"])
    problems = [f"line {_line(i)}, column 'subject_id': empty; expected a value"
                for i in frame.index[_blank(frame["subject_id"])]]
    for sid, group in frame[frame["subject_id"].duplicated(keep=False)].groupby("subject_id"):
        problems.append(f"lines {[_line(i) for i in group.index]}, column 'subject_id': {sid!r} appears more "
                        "than once; expected one row per subject")
    for column in frame.columns.drop("subject_id"):
        if not pd.api.types.is_float_dtype(frame[column]):
            continue
        for i in frame.index[np.isinf(frame[column].to_numpy())]:
            problems.append(f"line {_line(i)} (subject {frame.at[i, 'subject_id']!r}), column {column!r}: "
                            f"{frame.at[i, column]} is not a finite number; expected a number, or an empty cell "
                            "for a missing value")
    if problems:
        raise ManifestError(file, problems)
    return frame


def load_cohort(root: str | Path, *, check_files: bool = True, allow_outside_root: bool = False,
                require_labels: bool = True) -> Cohort:
    """Read and validate a manifest folder.

    Args:
        root: folder with ``manifest.csv`` (and optionally ``clinical.csv``),
            or the path of a manifest CSV itself.
        check_files: check that every image exists.
        allow_outside_root: accept image paths outside the folder.
        require_labels: ``False`` for new cases to predict: ``label`` may be empty or absent (empty
            labels stay missing; :attr:`Cohort.lesions` gives them ``y`` 0).

    Raises:
        FileNotFoundError: no manifest at ``root``.
        ManifestError: the manifest or clinical table breaks the contract, or is not a readable text CSV.
    """
    root = Path(root)
    manifest_file = root if root.suffix.lower() == ".csv" else root / MANIFEST_FILENAME
    root = manifest_file.parent
    if not manifest_file.is_file():
        raise FileNotFoundError(f"no manifest at {manifest_file}; expected a folder with {MANIFEST_FILENAME} "
                                "(see `breastfusion demo` for an example) or the path of a manifest CSV")
    frame = read_table(manifest_file, dtype=str, keep_default_na=False, na_values=[""])
    manifest = validate_manifest(frame, root=root, file=manifest_file, check_files=check_files,
                                 allow_outside_root=allow_outside_root, require_labels=require_labels)
    clinical_file = root / CLINICAL_FILENAME
    clinical = read_table(clinical_file, dtype={"subject_id": str}) if clinical_file.is_file() else None
    return Cohort(root=root, manifest=manifest,
                  clinical=_checked_clinical(clinical, manifest, file=clinical_file, manifest_name=manifest_file.name))


def _checked_clinical(clinical: pd.DataFrame | None, manifest: pd.DataFrame, *, file: Path,
                      manifest_name: str) -> pd.DataFrame:
    """The validated clinical table (an empty one when ``None``), every subject of it in the manifest."""
    if clinical is None:
        return pd.DataFrame({"subject_id": pd.Series(dtype=str)})
    clinical = validate_clinical(clinical, file=file)
    unknown = sorted(set(clinical["subject_id"]) - set(manifest["subject_id"]))
    if unknown:
        raise ManifestError(file, [f"subject_id(s) {unknown[:10]} have clinical data but no image "
                                   f"in {manifest_name}; expected every subject in the manifest"])
    return clinical


def _as_read(frame: pd.DataFrame, **read_csv) -> pd.DataFrame:
    """``frame`` as :func:`load_cohort` reads the CSV it would be written to (the text goes through memory only),
    so a DataFrame's cells get exactly a file's types: ``1`` and ``"1"`` are one subject id, blank is missing."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)), **read_csv)


def cohort_from_frame(manifest: pd.DataFrame, clinical: pd.DataFrame | None = None, *,
                      root: str | Path | None = None, check_files: bool = True, allow_outside_root: bool = True,
                      require_labels: bool = True) -> Cohort:
    """A manifest DataFrame (the columns of ``manifest.csv``) and clinical table as a validated cohort, in memory.

    Why: a notebook holds its cohort as DataFrames; validating them where they are (nothing is written)
    lets :meth:`breastfusion.api.Experiment.fit` and :meth:`breastfusion.bundle.Bundle.predict` accept one,
    with the checks and messages a folder gets (lines are counted as in the CSV the frame would be written to).

    Args:
        manifest: one row per image; any dtype (cells are read as text, as from a CSV).
        clinical: ``subject_id`` + one column per variable, or ``None`` (no clinical data).
        root: the folder relative image paths resolve against (default: the working directory).
        check_files, require_labels: as for :func:`load_cohort`.
        allow_outside_root: accept absolute image paths outside ``root`` (default ``True``: a DataFrame has no
            folder of its own to keep its images in).

    Raises:
        ManifestError: a frame breaks the contract (the file named ``<manifest DataFrame>`` / ``<clinical
            DataFrame>``).
        TypeError: ``manifest`` or ``clinical`` is not a DataFrame.
    """
    for name, frame in (("manifest", manifest), ("clinical", clinical)):
        if frame is not None and not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
    root = Path(root) if root is not None else Path.cwd()
    checked = validate_manifest(_as_read(manifest, dtype=str, keep_default_na=False, na_values=[""]), root=root,
                                file=Path("<manifest DataFrame>"), check_files=check_files,
                                allow_outside_root=allow_outside_root, require_labels=require_labels)
    if clinical is not None:
        clinical = _as_read(clinical, dtype={"subject_id": str} if "subject_id" in clinical else None)
    return Cohort(root=root, manifest=checked,
                  clinical=_checked_clinical(clinical, checked, file=Path("<clinical DataFrame>"),
                                             manifest_name="the manifest DataFrame"))

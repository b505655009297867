"""The bundle's contract: the schema of ``bundle.json`` (pydantic) and :class:`BundleError`.

:class:`BundleError` lives here, not in :mod:`breastfusion.bundle`, so that :mod:`breastfusion.predict`
(which :class:`~breastfusion.bundle.Bundle`'s ``predict`` calls) can raise it without importing the
bundle module back.

:func:`validate_meta` turns each problem into one line that names the key, what was found and what
was expected, so a hand-edited or damaged ``bundle.json`` (``n_folds: "abc"``, ``variant: ["x"]``, a
file name with a slash) is refused as a :class:`BundleError`, never a
``TypeError`` three calls later. The model is strict (no "2" for 2) and closed (unknown keys are
refused): a bundle written by a newer format is refused earlier, by its ``format_version``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

__all__ = ["BundleError", "BundleMeta", "BundleMetaError", "validate_meta"]

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
#: A plain file name inside the bundle folder: no separators, not hidden, not ``.``/``..``.
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$", max_length=128)]
Modality = Literal["mammography", "ultrasound", "clinical"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0)]


class BundleError(ValueError):
    """A bundle cannot be written or read; the message names the file and what to do."""


class BundleMetaError(ValueError):
    """``bundle.json`` breaks the schema; ``problems`` lists every finding (key, found, expected)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Metrics(_Strict):
    """The variant's out-of-fold, subject-level performance as the run reported it."""

    level: str
    auc: Probability | None = None
    auc_ci: Annotated[list[Probability], Field(min_length=2, max_length=2)] | None = None
    threshold_metrics: dict[str, Any] | None = None
    n_subjects: Count | None = None
    n_malignant: Count | None = None


class BundleMeta(_Strict):
    """``bundle.json`` (see :mod:`breastfusion.bundle` for what each key means)."""

    format: Literal["breastfusion-bundle"]
    format_version: Annotated[int, Field(ge=1)]
    breastfusion_version: Annotated[str, StringConstraints(min_length=1)]
    created: str
    run_name: str
    run_created: str | None = None
    variant: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    modalities: Annotated[list[Modality], Field(min_length=1)]
    n_folds: Annotated[int, Field(ge=1, le=100)]
    stage2: Annotated[str, StringConstraints(min_length=1)]
    manifest_sha256: Sha256 | None = None
    metrics: Metrics
    evaluation: dict[str, Any]
    preprocessing: dict[Modality, dict[str, Any]]
    clinical_columns: dict[Literal["numeric", "categorical", "binary"], list[str]] | None = None
    versions: dict[str, str | None]
    run_versions: dict[str, Any] | None = None
    files: Annotated[dict[FileName, Sha256], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> "BundleMeta":
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities {self.modalities} repeat a modality")
        if "bundle.json" in self.files:
            raise ValueError("files lists bundle.json itself; it lists the other files")
        return self


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def validate_meta(meta: Any) -> BundleMeta:
    """``bundle.json``'s parsed JSON as a :class:`BundleMeta`.

    Raises:
        BundleMetaError: every key that is missing, unknown, or holds a value of the wrong type or range.
    """
    try:
        return BundleMeta.model_validate(meta)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            found = error.get("input")
            shown = repr(found) if len(repr(found)) <= 60 else repr(found)[:57] + "..."
            if error["type"] == "missing":
                problems.append(f"key '{_where(error['loc'])}' is missing")
            elif error["type"] == "extra_forbidden":
                problems.append(f"key '{_where(error['loc'])}' is not a bundle.json key")
            else:
                message = error["msg"].removeprefix("Input should be ").removeprefix("Value error, ").removeprefix(
                    "String should ")
                problems.append(f"key '{_where(error['loc'])}': got {shown}; expected {message}")
        raise BundleMetaError(problems) from None

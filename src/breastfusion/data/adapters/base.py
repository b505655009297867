"""What every dataset adapter returns, the registry by name, and writing a manifest folder.

An adapter reads a dataset as its authors publish it and returns a
:class:`PreparedDataset`: manifest rows (paths relative to the dataset root),
an optional clinical table, the rows it left out with their reason, and notes
saying how the dataset's own labels were mapped. :func:`write_prepared` turns
that into a manifest folder that :func:`breastfusion.data.manifest.load_cohort`
reads: images are hard-linked into ``images/`` (no extra disk on one
filesystem; copied where links fail) so every path stays inside the folder.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from breastfusion.data.manifest import CLINICAL_FILENAME, MANIFEST_COLUMNS, MANIFEST_FILENAME, validate_manifest

__all__ = [
    "DatasetLayoutError",
    "AdapterOptionError",
    "PreparedDataset",
    "ADAPTERS",
    "register",
    "get_adapter",
    "write_prepared",
    "place_file",
    "IMAGE_MODES",
]

IMAGE_MODES = ("link", "copy", "absolute")


class DatasetLayoutError(ValueError):
    """The root folder is not laid out like the dataset the adapter reads."""


class AdapterOptionError(ValueError):
    """An adapter was given an option it does not take, or a bad value."""


@dataclass
class PreparedDataset:
    """One dataset mapped to the manifest contract.

    Attributes:
        name: the adapter's registry name.
        root: the dataset folder that ``manifest["path"]`` (and ``mask_path``) are relative to.
        manifest: rows with :data:`MANIFEST_COLUMNS` and any extra columns.
        clinical: one row per subject (``subject_id`` + variables), or ``None``.
        tables: other tables to write beside it, by file name (e.g. an opt-in feature group).
        excluded: rows left out, with ``path`` and ``reason`` (written to ``excluded.csv``).
        notes: how labels were mapped, what was left out and why.
        generated: images the adapter created (e.g. from an NPZ), ``{relative path: uint8 (H, W)}``;
            their manifest paths are relative to the output folder.
    """

    name: str
    root: Path
    manifest: pd.DataFrame
    clinical: pd.DataFrame | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    notes: list[str] = field(default_factory=list)
    generated: dict[str, np.ndarray] = field(default_factory=dict)


Adapter = Callable[..., PreparedDataset]
ADAPTERS: dict[str, Adapter] = {}
ALIASES = {"mini_mias": "mias", "bus_bra": "busbra", "breast": "breast_lesions_usg",
           "breast_lesions": "breast_lesions_usg", "cbis": "cbis_ddsm", "medmnist": "breastmnist"}


def register(name: str) -> Callable[[Adapter], Adapter]:
    """Decorator: add an adapter ``fn(root: Path, **options) -> PreparedDataset`` under ``name``."""

    def add(fn: Adapter) -> Adapter:
        ADAPTERS[name] = fn
        return fn

    return add


def get_adapter(name: str) -> Adapter:
    """The adapter registered as ``name`` (case and ``-``/``_`` insensitive).

    Raises:
        KeyError: unknown name; the message lists the known ones and the nearest.
    """
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in ADAPTERS:
        return ADAPTERS[key]
    near = difflib.get_close_matches(key, ADAPTERS, n=1, cutoff=0.4)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise KeyError(f"unknown dataset {name!r}{hint} Known datasets: {sorted(ADAPTERS)}")


def take_options(name: str, options: dict, allowed: dict[str, tuple]) -> dict:
    """Check ``options`` against ``{option: allowed values or ()}`` (``()`` = any); fill defaults (first value).

    Raises:
        AdapterOptionError: an unknown option or a value outside the allowed ones.
    """
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AdapterOptionError(f"dataset {name!r} takes no option(s) {unknown}; it takes {sorted(allowed)}")
    out = {}
    for key, values in allowed.items():
        value = options.get(key)
        if value is None:
            value = values[0] if values else None
        elif values and value not in values:
            raise AdapterOptionError(f"dataset {name!r}: option {key} should be one of {list(values)}, got {value!r}")
        out[key] = value
    return out


def place_file(source: Path, target: Path, mode: str) -> None:
    """Put ``source`` at ``target``: a hard link for ``link`` (a copy where linking fails), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if mode == "link":
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem or no permission: copy instead
    shutil.copy2(source, target)


def write_prepared(prepared: PreparedDataset, out: str | Path, *, images: str = "link") -> Path:
    """Write ``manifest.csv`` (+ ``clinical.csv``, other tables, ``excluded.csv``, ``dataset.json``) to ``out``.

    Args:
        prepared: an adapter's result.
        out: the manifest folder to write (created).
        images: ``link`` (hard links under ``out/images``, copies where links fail), ``copy``, or
            ``absolute`` (leave images in place; the manifest then needs ``allow_outside_root``).

    Returns:
        the output folder.

    Raises:
        ValueError: ``images`` is not one of :data:`IMAGE_MODES`.
        ManifestError: the adapter produced rows that break the manifest contract.
    """
    if images not in IMAGE_MODES:
        raise ValueError(f"images should be one of {list(IMAGE_MODES)}, got {images!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = prepared.manifest.copy()
    generated = set(prepared.generated)
    for rel, pixels in prepared.generated.items():
        from PIL import Image

        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out / rel)

    def relocate(rel: str) -> str:
        if not isinstance(rel, str) or not rel or rel in generated:
            return rel
        source = prepared.root / rel
        if images == "absolute":
            return str(source.resolve())
        place_file(source, out / "images" / rel, images)
        return f"images/{rel}"

    manifest["path"] = manifest["path"].map(relocate)
    if "mask_path" in manifest:
        manifest["mask_path"] = manifest["mask_path"].map(
            lambda v: "|".join(relocate(p) for p in v.split("|")) if isinstance(v, str) and v else v)
    columns = list(MANIFEST_COLUMNS) + [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
    manifest = manifest[columns]
    validate_manifest(manifest.astype({"view": str}).reset_index(drop=True), root=out, file=out / MANIFEST_FILENAME,
                      allow_outside_root=images == "absolute")
    manifest.to_csv(out / MANIFEST_FILENAME, index=False)
    if prepared.clinical is not None:
        prepared.clinical.to_csv(out / CLINICAL_FILENAME, index=False)
    for name, table in prepared.tables.items():
        table.to_csv(out / name, index=False)
    prepared.excluded.to_csv(out / "excluded.csv", index=False)
    counts = manifest.groupby(["modality", "label"]).size()
    summary = {
        "dataset": prepared.name,
        "root": str(prepared.root.resolve()),
        "images": images,
        "n_images": int(len(manifest)),
        "n_subjects": int(manifest["subject_id"].nunique()),
        "counts": {f"{m}/{lab}": int(n) for (m, lab), n in counts.items()},
        "n_excluded": int(len(prepared.excluded)),
        "excluded_reasons": {str(k): int(v) for k, v in prepared.excluded["reason"].value_counts().items()},
        "notes": prepared.notes,
        "tables": sorted(prepared.tables),
    }
    (out / "dataset.json").write_text(json.dumps(summary, indent=2))
    return out

"""``breastfusion data prepare|check|pool`` and ``breastfusion cache info|clear``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from breastfusion.cli.common import fail

__all__ = ["app", "cache_app"]

app = typer.Typer(help="Prepare public datasets as manifests and check manifest folders.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_show_locals=False)
cache_app = typer.Typer(help="The preprocessed-array cache.", no_args_is_help=True, add_completion=False,
                        pretty_exceptions_show_locals=False)
console = Console()


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            fail(f"{what} {value!r}: expected KEY=VALUE")
        out[key.strip()] = val.strip()
    return out


@app.command()
def prepare(
    name: Annotated[str, typer.Argument(help="Dataset: busi, breastmnist, mias, cbis_ddsm, busbra, "
                                             "breast_lesions_usg, cmmd, generic.")],
    root: Annotated[Path, typer.Option("--root", help="The dataset as published (its top folder).")],
    out: Annotated[Path, typer.Option("--out", help="Manifest folder to write.")],
    normal: Annotated[Optional[str], typer.Option("--normal", help="Normal (no lesion) cases: exclude | benign "
                                                                   "(datasets that have them).")] = None,
    features: Annotated[Optional[str], typer.Option("--features", help="clinical | lexicon: add the radiologist's "
                                                                        "BI-RADS descriptors (BrEaST, CMMD).")] = None,
    images: Annotated[str, typer.Option("--images", help="link (hard links, else copies, under OUT/images) | copy "
                                                         "| absolute (paths into ROOT).")] = "link",
    modality: Annotated[Optional[str], typer.Option("--modality", help="generic: mammography | ultrasound.")] = None,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="generic: a CSV to read instead of class folders.")] = None,
    column: Annotated[list[str], typer.Option("--column", help="generic: FIELD=CSV_COLUMN (path, label, subject_id, "
                                                               "lesion_id, view); repeat.")] = [],  # noqa: B006
    label_map: Annotated[list[str], typer.Option("--label-map", help="generic: VALUE=benign|malignant|exclude; "
                                                                     "repeat.")] = [],  # noqa: B006
) -> None:
    """Read a public dataset as published and write a manifest folder (manifest.csv, clinical.csv, dataset.json)."""
    from breastfusion.data.adapters import AdapterOptionError, DatasetLayoutError, get_adapter, write_prepared
    from breastfusion.data.manifest import ManifestError

    options = {"normal": normal, "features": features, "modality": modality,
               "csv": str(csv) if csv else None, "columns": _pairs(column, "--column") or None,
               "label_map": _pairs(label_map, "--label-map") or None}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        prepared = get_adapter(name)(root, **options)
        write_prepared(prepared, out, images=images)
    except KeyError as exc:
        fail(exc.args[0])
    except (DatasetLayoutError, AdapterOptionError, ManifestError, ValueError, OSError) as exc:
        fail(str(exc))
    summary = json.loads((out / "dataset.json").read_text())
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    console.print(f"{summary['dataset']}: {summary['n_images']} images of {summary['n_subjects']} subjects "
                  f"({counts}); {summary['n_excluded']} left out (listed in excluded.csv) → [b]{out}[/b]")
    for note in summary["notes"]:
        console.print(f"  · {note}", soft_wrap=True)


@app.command()
def check(
    manifest_dir: Annotated[Path, typer.Argument(help="Manifest folder (or manifest CSV).")],
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON.")] = None,
    group_duplicates: Annotated[bool, typer.Option("--group-duplicates", help="Write manifest.grouped.csv with a "
                                                   "cv_group column joining subjects that share near-duplicates.")]
    = False,
    max_distance: Annotated[int, typer.Option("--max-distance", help="pHash bits (of 64) that may differ "
                                                                      "between near-duplicates.")] = 6,
    allow_outside_root: Annotated[bool, typer.Option("--allow-outside-root",
                                                     help="Accept image paths outside the folder.")] = False,
) -> None:
    """Class balance, missing modalities, unreadable files, sizes, bit depths and near-duplicate images."""
    from breastfusion.data.check import check_cohort
    from breastfusion.data.check import group_duplicates as write_groups
    from breastfusion.data.manifest import ManifestError, load_cohort

    try:
        cohort = load_cohort(manifest_dir, check_files=False, allow_outside_root=allow_outside_root)
    except (ManifestError, FileNotFoundError) as exc:
        fail(str(exc))
    report = check_cohort(cohort, max_distance=max_distance)
    console.print(f"{report.n_images} images, {report.n_subjects} subjects, {report.n_lesions} lesions")
    for modality, balance in report.class_balance.items():
        missing = len(report.subjects_missing.get(modality, []))
        console.print(f"  {modality}: {balance}; {missing} subject(s) without it; sizes "
                      f"{report.sizes.get(modality)}; bit depths {report.bit_depths.get(modality)}")
    cross = sum(p["cross_subject"] for p in report.duplicate_pairs)
    console.print(f"near-duplicates (pHash <= {max_distance}): {len(report.duplicate_pairs)} pairs, {cross} across "
                  f"subjects, {sum(p['cross_label'] for p in report.duplicate_pairs)} across labels; "
                  f"{len(report.duplicate_groups)} groups, {len(report.leaking_groups)} would leak across folds")
    if report.unreadable:
        console.print(f"[red]{len(report.unreadable)} unreadable file(s):[/red]")
        for item in report.unreadable[:20]:
            console.print(f"  - {item['error']}", soft_wrap=True)
    if report.suspicious:
        console.print(f"[yellow]{len(report.suspicious)} suspicious image(s) (decoded, but check them by eye):"
                      "[/yellow]")
        for item in report.suspicious[:20]:
            console.print(f"  - {item['path']}: {item['problem']}", soft_wrap=True)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report.to_json(), indent=2))
        console.print(f"report: {json_file}")
    if group_duplicates:
        console.print(f"grouped manifest: {write_groups(cohort, report)}")
    if report.unreadable:
        raise typer.Exit(code=1)


@cache_app.command()
def info(
    cache_dir: Annotated[Optional[Path], typer.Option("--dir", help="Cache folder (default $BREASTFUSION_CACHE "
                                                                    "or ~/.cache/breastfusion/arrays).")] = None,
) -> None:
    """Where the cache is, how many arrays it holds and their size."""
    from breastfusion.data.cache import ArrayCache

    stats = ArrayCache(cache_dir).info()
    console.print(f"{stats.root}: {stats.entries} arrays, {stats.bytes / 2**20:.1f} MiB")


@cache_app.command()
def clear(
    cache_dir: Annotated[Optional[Path], typer.Option("--dir", help="Cache folder (default as for info).")] = None,
) -> None:
    """Delete every cached array."""
    from breastfusion.data.cache import ArrayCache

    n = ArrayCache(cache_dir).clear()
    console.print(f"removed {n} arrays from {ArrayCache(cache_dir).root}")


@app.command("preprocess")
def preprocess_cmd(
    manifest_dir: Annotated[Path, typer.Argument(help="Manifest folder (or manifest CSV).")],
    size: Annotated[int, typer.Option("--size", help="Output side in pixels (both modalities).")] = 256,
    roi: Annotated[str, typer.Option("--roi", help="none | mask (mask_path column) | box (roi_box column).")] = "none",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode everything again; store nothing.")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder.")] = None,
    exclude_unreadable: Annotated[bool, typer.Option("--exclude-unreadable", help="Leave unreadable images out "
                                                     "(recorded in the JSON) instead of failing.")] = False,
    record: Annotated[Optional[Path], typer.Option("--record", help="Where to write the record (default "
                                                                    "MANIFEST_DIR/preprocess.json).")] = None,
) -> None:
    """Decode and preprocess every image into the cache; list every unreadable file."""
    from breastfusion.data.cache import ArrayCache, preprocess_cohort
    from breastfusion.data.manifest import ManifestError, load_cohort
    from breastfusion.data.preprocess import PreprocessError, params_for
    from breastfusion.data.readers import ImageReadError

    try:
        cohort = load_cohort(manifest_dir, check_files=False)
        params = {m: params_for(m, size=size, roi=roi) for m in sorted(set(cohort.manifest["modality"]))}
        cache = ArrayCache(cache_dir, enabled=not no_cache)
        result = preprocess_cohort(cohort, params, cache=cache, exclude_unreadable=exclude_unreadable)
    except (ManifestError, FileNotFoundError, PreprocessError, ImageReadError) as exc:
        fail(str(exc))
    record = record or cohort.root / "preprocess.json"
    record.write_text(json.dumps({"params": result.params, "n_images": len(result.arrays),
                                  "excluded_unreadable": result.failures, "cache": str(cache.root) if
                                  cache.enabled else None, "cache_hits": cache.hits, "cache_misses": cache.misses},
                                 indent=2))
    console.print(f"{len(result.arrays)} images preprocessed ({cache.hits} from the cache); "
                  f"{len(result.excluded)} unreadable left out; record: {record}")


@app.command()
def pool(
    primary: Annotated[Path, typer.Argument(help="The cohort folder the folds and figures are on.")],
    add: Annotated[list[str], typer.Option("--add", help="NAME=FOLDER: a cohort pooled into every training fold "
                                                         "(never tested); repeat.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest folder to write (images hard-linked into it).")],
    column: Annotated[str, typer.Option("--column", help="The column marking the pooled lesions.")]
    = "training_only",
) -> None:
    """Pool other cohorts into one cohort's training folds: run OUT with cv.training_only_column set to COLUMN."""
    from breastfusion.data.manifest import ManifestError
    from breastfusion.data.pooling import write_pooled

    others = _pairs(add, "--add")
    try:
        write_pooled(primary, {name: Path(folder) for name, folder in others.items()}, out, column=column)
    except (ManifestError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    from breastfusion.data.manifest import load_cohort

    manifest = load_cohort(out).manifest
    pooled = manifest[column].astype(str) == "1"
    console.print(f"{int((~pooled).sum())} images of {primary} and {int(pooled.sum())} pooled from "
                  f"{', '.join(others)} → [b]{out}[/b]")
    console.print(f"  · run it with cv: {{training_only_column: {column}}} (the folds and figures are {primary}'s)",
                  soft_wrap=True)

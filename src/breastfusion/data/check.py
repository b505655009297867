"""``breastfusion data check``: what a manifest folder holds, and what would bias a result.

It reports class balance per modality, subjects missing a modality, unreadable
files (each with its reason), suspicious files (decoded, but nearly constant or
nearly black: most likely a wrong intensity range), the spread of image sizes and bit depths, and
near-duplicate images found by perceptual hash (imagehash's pHash, Hamming
distance at most ``max_distance`` of 64 bits), grouped by connected
components. Groups spanning several subjects would put one scene on both
sides of a cross-validation split; :func:`group_duplicates` writes a manifest
with a ``cv_group`` column that gives such subjects one group.

On BUSI, pHash distance <= 6 finds all 70 pairs of ``near_duplicates.csv`` and
~140 more; the ones inspected by eye were the same scene re-cropped or a
neighbouring frame (the list says of itself that it is incomplete).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from breastfusion.data.manifest import IMAGE_MODALITIES, MANIFEST_FILENAME, Cohort
from breastfusion.data.tables import read_table
from breastfusion.data.readers import quality_problems, read_image

__all__ = ["CheckReport", "check_cohort", "duplicate_pairs", "perceptual_hash", "group_duplicates"]


@dataclass
class CheckReport:
    """Findings of :func:`check_cohort` (``to_json()`` is the ``--json`` file).

    Attributes:
        n_images, n_subjects, n_lesions: counts over the manifest.
        class_balance: ``{modality: {label: images}}``.
        subjects_missing: ``{modality: [subject_id, ...]}`` subjects without that modality.
        unreadable: ``[{"path", "error"}]``: every file that could not be read or hashed, with the reason (one
            bad file never stops the check).
        suspicious: ``[{"path", "problem"}]``: decoded, but nearly constant or nearly black
            (:func:`~breastfusion.data.readers.quality_problems`).
        sizes: ``{modality: {"height": [min, median, max], "width": [...]}}``.
        bit_depths: ``{modality: {bits: images}}``.
        duplicate_pairs: ``[{"a", "b", "distance", "cross_subject", "cross_label"}]``.
        duplicate_groups: connected groups of near-duplicate paths (each sorted).
        leaking_groups: indices into ``duplicate_groups`` of groups spanning more than one subject.
    """

    n_images: int
    n_subjects: int
    n_lesions: int
    class_balance: dict = field(default_factory=dict)
    subjects_missing: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)
    suspicious: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict)
    bit_depths: dict = field(default_factory=dict)
    duplicate_pairs: list = field(default_factory=list)
    duplicate_groups: list = field(default_factory=list)
    leaking_groups: list = field(default_factory=list)
    max_distance: int = 6

    def to_json(self) -> dict:
        """A JSON-ready dict (keys as in the attributes)."""
        return asdict(self)


def perceptual_hash(pixels: np.ndarray) -> np.ndarray:
    """64-bit pHash (imagehash) of a float (H, W) image in [0, 1], as bool (64,)."""
    import imagehash
    from PIL import Image

    image = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    return imagehash.phash(image, hash_size=8).hash.ravel()


def duplicate_pairs(hashes: np.ndarray, max_distance: int, *, block: int = 2048) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance), i < j, whose hashes differ in at most ``max_distance`` bits.

    Args:
        hashes: bool (N, 64).
        block: rows compared at once (memory ~ block * N * 8 bytes).
    """
    packed = np.packbits(hashes.astype(np.uint8), axis=1).view(">u8").ravel()  # (N,) uint64
    pairs = []
    for start in range(0, len(packed), block):
        rows = packed[start:start + block]
        dist = np.bitwise_count(rows[:, None] ^ packed[None, :])
        for i, j in zip(*np.nonzero(dist <= max_distance)):
            i = int(i) + start
            if i < j:
                pairs.append((i, int(j), int(dist[i - start, j])))
    return pairs


def _components(n: int, pairs: list[tuple[int, int, int]]) -> list[list[int]]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return []
    i, j, _ = np.array(pairs).T
    _, labels = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    groups = pd.Series(np.arange(n)).groupby(labels).apply(list)
    return [g for g in groups if len(g) > 1]


def check_cohort(cohort: Cohort, *, max_distance: int = 6, on_image: Callable[[], None] | None = None) -> CheckReport:
    """Read every image of ``cohort`` once and report on the whole manifest.

    Args:
        cohort: from :func:`breastfusion.data.manifest.load_cohort` (``check_files=False`` is fine:
            missing files are reported as unreadable).
        max_distance: pHash Hamming distance (of 64 bits) at or under which two images are near-duplicates.
        on_image: called after each image (progress).
    """
    manifest = cohort.manifest.reset_index(drop=True)
    report = CheckReport(n_images=len(manifest), n_subjects=int(manifest["subject_id"].nunique()),
                         n_lesions=int(manifest["lesion_id"].nunique()), max_distance=max_distance)
    subjects = set(manifest["subject_id"])
    for modality in IMAGE_MODALITIES:
        rows = manifest[manifest["modality"] == modality]
        if rows.empty:
            continue
        report.class_balance[modality] = {k: int(v) for k, v in rows["label"].value_counts().sort_index().items()}
        report.subjects_missing[modality] = sorted(subjects - set(rows["subject_id"]))

    hashes, hashed, shapes, bits = [], [], [], []
    for i, path in enumerate(manifest["path"]):
        try:
            image = read_image(path)
            digest = perceptual_hash(image.pixels)
        except Exception as exc:  # noqa: BLE001 - one file's failure is a finding, never the end of the check
            error = str(exc) if str(exc).startswith(str(path)) else f"{path}: {type(exc).__name__}: {exc}"
            report.unreadable.append({"path": str(path), "error": error})
        else:
            hashes.append(digest)
            hashed.append(i)
            shapes.append(image.pixels.shape)
            bits.append(image.bits)
            report.suspicious += [{"path": str(path), "problem": p} for p in quality_problems(image.pixels)]
        if on_image is not None:
            on_image()

    if hashed:
        ok = manifest.loc[hashed].assign(height=[s[0] for s in shapes], width=[s[1] for s in shapes], bits=bits)
        for modality, rows in ok.groupby("modality"):
            report.sizes[modality] = {axis: [int(rows[axis].min()), float(rows[axis].median()), int(rows[axis].max())]
                                      for axis in ("height", "width")}
            report.bit_depths[modality] = {str(k): int(v) for k, v in rows["bits"].value_counts().sort_index().items()}
        pairs = duplicate_pairs(np.array(hashes), max_distance)
        rows = manifest.loc[hashed].reset_index(drop=True)
        for a, b, distance in pairs:
            report.duplicate_pairs.append({
                "a": rows.at[a, "path"], "b": rows.at[b, "path"], "distance": distance,
                "cross_subject": bool(rows.at[a, "subject_id"] != rows.at[b, "subject_id"]),
                "cross_label": bool(rows.at[a, "label"] != rows.at[b, "label"])})
        for group in _components(len(rows), pairs):
            report.duplicate_groups.append(sorted(rows.loc[group, "path"]))
            if rows.loc[group, "subject_id"].nunique() > 1:
                report.leaking_groups.append(len(report.duplicate_groups) - 1)
    return report


def group_duplicates(cohort: Cohort, report: CheckReport, out: str | Path | None = None) -> Path:
    """Write a copy of the manifest with a ``cv_group`` column: subjects sharing a duplicate group share one value.

    ``subject_id`` is left as it is (the clinical table stays keyed by it); the file is written
    next to ``manifest.csv`` by default (``manifest.grouped.csv``), so its relative paths and the
    clinical table still resolve: load it with ``load_cohort(folder / "manifest.grouped.csv")``.
    A group value is the sorted member subject IDs joined with ``+`` (a lone subject keeps its ID).

    Returns:
        the written manifest path.
    """
    out = Path(out) if out is not None else cohort.root / "manifest.grouped.csv"
    source = read_table(cohort.root / MANIFEST_FILENAME, dtype=str, keep_default_na=False, na_values=[""])
    subject_of = dict(zip(cohort.manifest["path"], cohort.manifest["subject_id"]))
    parent = {s: s for s in cohort.manifest["subject_id"]}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for index in report.leaking_groups:
        first, *others = [subject_of[p] for p in report.duplicate_groups[index]]
        for other in others:
            parent[find(other)] = find(first)
    members: dict[str, list[str]] = {}
    for subject in parent:
        members.setdefault(find(subject), []).append(subject)
    group = {s: "+".join(sorted(members[find(s)])) for s in parent}
    source["cv_group"] = [group[s] for s in cohort.manifest["subject_id"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    source.to_csv(out, index=False)
    return out

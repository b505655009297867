"""Generate a synthetic multimodal breast-lesion cohort on disk.

The cohort travels the same path as real data: PNG images, a manifest (one row
per image) and a clinical table keyed by subject. Beside them it writes the
ground truth that real data never has: the latent lesion properties and the
oracle posterior, in ``truth.csv``, which no model reads. It also writes each
image's lesion mask (``masks/<image>_mask.png``, listed in the manifest's extra
column ``mask_path``), against which explanation heatmaps are scored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from breastfusion.data.manifest import CLINICAL_FILENAME, MANIFEST_FILENAME
from breastfusion.data.synthetic.latents import MODALITY_LATENTS, oracle_posterior, sample_latents
from breastfusion.data.synthetic.render import LesionShape, render_mammogram, render_ultrasound

__all__ = ["SyntheticCohort", "Oracle", "generate_cohort", "load_oracle", "TRUTH_FILENAME", "MASK_COLUMN"]

TRUTH_FILENAME = "truth.csv"
#: Extra manifest column holding each image's lesion mask (a 0/255 PNG, same size as the image).
MASK_COLUMN = "mask_path"
_MAX_SPICULES = 14
_DENSITY_LABELS = ("a", "b", "c", "d")


@dataclass
class Oracle:
    """The generator's ground truth for a cohort: latents, labels and the prior.

    Attributes:
        truth: one row per subject (``subject_id``, ``label``, latents).
        prevalence: the prior P(malignant) the cohort was drawn with.
    """

    truth: pd.DataFrame
    prevalence: float

    def posterior(self, modalities: tuple[str, ...] | None = None) -> pd.Series:
        """P(malignant | latents) per subject (index ``subject_id``).

        Args:
            modalities: condition only on the latents these modalities observe;
                ``None`` conditions on every latent (the Bayes-optimal oracle).
        """
        observed = None
        if modalities is not None:
            observed = tuple(dict.fromkeys(n for m in modalities for n in MODALITY_LATENTS[m]))
        values = oracle_posterior(self.truth, prevalence=self.prevalence, observed=observed)
        return pd.Series(values, index=self.truth["subject_id"].to_numpy(), name="oracle_posterior")


def load_oracle(root: str | Path) -> Oracle | None:
    """The oracle of a synthetic cohort folder, or ``None`` for real data (no ``truth.csv``)."""
    root = Path(root)
    if not (root / TRUTH_FILENAME).is_file() or not (root / "cohort.json").is_file():
        return None
    truth = pd.read_csv(root / TRUTH_FILENAME, dtype={"subject_id": str})
    truth["density"] = truth["density"].map({c: i for i, c in enumerate(_DENSITY_LABELS)})
    prevalence = json.loads((root / "cohort.json").read_text())["params"]["prevalence"]
    return Oracle(truth, prevalence)


@dataclass
class SyntheticCohort:
    """What :func:`generate_cohort` wrote, and the oracle it knows.

    Attributes:
        root: folder holding the manifest, clinical table, truth and images.
        manifest: one row per image (the manifest contract).
        clinical: one row per subject with clinical data.
        truth: latents, label and oracle posteriors per subject.
        oracle_auc: AUC of the Bayes-optimal posterior on this cohort.
        modality_oracle_auc: AUC of P(malignant | latents a modality observes).
    """

    root: Path
    manifest: pd.DataFrame
    clinical: pd.DataFrame
    truth: pd.DataFrame
    oracle_auc: float
    modality_oracle_auc: dict[str, float]


def _missing_plan(n: int, rate: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-subject presence of each modality; every subject keeps at least one image modality."""
    mammo = rng.random(n) >= rate
    us = rng.random(n) >= rate
    neither = ~mammo & ~us
    keep_mammo = rng.random(n) < 0.5
    mammo = mammo | (neither & keep_mammo)
    us = us | (neither & ~keep_mammo)
    clinical = rng.random(n) >= rate
    return {"mammography": mammo, "ultrasound": us, "clinical": clinical}


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.round(array * 255).astype(np.uint8), mode="L").save(path)


def generate_cohort(
    out_dir: str | Path,
    *,
    n_subjects: int = 600,
    seed: int = 0,
    prevalence: float = 0.42,
    us_frames: int = 1,
    missing_rate: float = 0.0,
    image_px: int = 128,
    on_subject: Callable[[], None] | None = None,
    masks: bool = True,
) -> SyntheticCohort:
    """Draw a cohort, render its images and write it as a manifest folder.

    Args:
        out_dir: folder to write (created; existing files of the same names are replaced).
        n_subjects: number of subjects (one lesion each).
        seed: seed of every random choice.
        prevalence: P(malignant); 0.42 matches the MPM-MU cohort (279 / 663).
        us_frames: ultrasound frames per lesion.
        missing_rate: per subject and modality, the chance it is missing
            (a subject always keeps at least one image modality).
        image_px: side of the rendered images in pixels.
        on_subject: called after each subject is rendered (progress).
        masks: also write each image's lesion mask under ``masks/`` and list it
            in the manifest column ``mask_path`` (the images are the same either way).

    Returns:
        The written cohort with its oracle AUCs.
    """
    if n_subjects < 10:
        raise ValueError(f"n_subjects should be at least 10, got {n_subjects}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate should be in [0, 1), got {missing_rate}")
    if us_frames < 1:
        raise ValueError(f"us_frames should be at least 1, got {us_frames}")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    latents = sample_latents(n_subjects, prevalence=prevalence, rng=rng)
    present = _missing_plan(n_subjects, missing_rate, rng)
    width = len(str(n_subjects))
    subject_ids = [f"S{i:0{width}d}" for i in range(n_subjects)]
    labels = np.where(latents["label"] == 1, "malignant", "benign")

    rows: list[dict] = []
    for i, row in enumerate(latents.itertuples(index=False)):
        sid = subject_ids[i]
        shape = LesionShape.draw(n_spicules=_MAX_SPICULES, rng=rng)
        size_mm = float(np.exp(row.log_size_mm))
        irregularity = float(expit(row.irregularity_raw))

        def add(modality: str, view: str, rendered: np.ndarray | tuple[np.ndarray, np.ndarray]) -> None:
            rel = f"images/{sid}_{modality}_{view}.png"
            image, mask = rendered if masks else (rendered, None)
            _save_png(image, root / rel)
            row = dict(subject_id=sid, lesion_id=f"{sid}-L1", modality=modality, view=view,
                       path=rel, label=labels[i])
            if mask is not None:
                row[MASK_COLUMN] = f"masks/{sid}_{modality}_{view}_mask.png"
                _save_png(mask.astype(np.float32), root / row[MASK_COLUMN])
            rows.append(row)

        if present["mammography"][i]:
            for view in ("CC", "MLO"):
                add("mammography", view, render_mammogram(
                    size_mm=size_mm, irregularity=irregularity, spiculation=float(expit(row.spiculation_raw)),
                    microcalcifications=bool(row.microcalcifications), density=int(row.density),
                    shape=shape, view=view, rng=rng, px=image_px, return_mask=masks))
        if present["ultrasound"][i]:
            for frame in range(us_frames):
                add("ultrasound", f"frame{frame + 1}", render_ultrasound(
                    size_mm=size_mm, irregularity=irregularity, nonparallel=bool(row.nonparallel),
                    posterior=int(row.posterior_features),
                    hypoechogenicity=float(expit(row.hypoechogenicity_raw)), shape=shape, rng=rng, px=image_px,
                    return_mask=masks))
        if on_subject is not None:
            on_subject()

    manifest = pd.DataFrame(rows)
    clinical = pd.DataFrame({
        "subject_id": subject_ids,
        "age": np.round(latents["age"]).astype(int),
        "bmi": np.round(latents["bmi"], 1),
        "menopausal_status": np.where(latents["menopausal"] == 1, "post", "pre"),
        "family_history": latents["family_history"].astype(int),
        "palpable": latents["palpable"].astype(int),
    })[present["clinical"]].reset_index(drop=True)

    truth = latents.copy()
    truth.insert(0, "subject_id", subject_ids)
    truth["density"] = [_DENSITY_LABELS[c] for c in latents["density"]]
    truth["oracle_posterior"] = oracle_posterior(latents, prevalence=prevalence)
    modality_auc = {}
    for modality, observed in MODALITY_LATENTS.items():
        truth[f"oracle_posterior_{modality}"] = oracle_posterior(latents, prevalence=prevalence, observed=observed)
        modality_auc[modality] = float(roc_auc_score(latents["label"], truth[f"oracle_posterior_{modality}"]))
    oracle_auc = float(roc_auc_score(latents["label"], truth["oracle_posterior"]))

    manifest.to_csv(root / MANIFEST_FILENAME, index=False)
    clinical.to_csv(root / CLINICAL_FILENAME, index=False)
    truth.to_csv(root / TRUTH_FILENAME, index=False)
    params = dict(n_subjects=n_subjects, seed=seed, prevalence=prevalence, us_frames=us_frames,
                  missing_rate=missing_rate, image_px=image_px)
    (root / "cohort.json").write_text(json.dumps(
        {"generator": "breastfusion.data.synthetic", "params": params, "oracle_auc": oracle_auc,
         "modality_oracle_auc": modality_auc}, indent=2))
    return SyntheticCohort(root, manifest, clinical, truth, oracle_auc, modality_auc)

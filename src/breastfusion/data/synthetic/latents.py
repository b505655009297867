"""Latent lesion properties of the synthetic cohort and their exact Bayes posterior.

Every latent that carries class information is drawn from a class-conditional
distribution, independently of the others given the class (a naive-Bayes
generative model). Two more latents depend only on other latents (menopausal
status on age, palpability on size), as they would in a real clinic. With this
structure the posterior P(malignant | latents) has a closed form: the prior
log-odds plus the sum of per-latent log-likelihood ratios. That posterior is
the *oracle*: no model that sees only the rendered images and the clinical
table can beat it in expectation.

Each modality observes a different subset of the latents (see
``MODALITY_LATENTS``), so fusing modalities carries information that no
single modality has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit

__all__ = [
    "GaussianLatent",
    "BernoulliLatent",
    "CategoricalLatent",
    "LATENTS",
    "MODALITY_LATENTS",
    "sample_latents",
    "oracle_posterior",
]


@dataclass(frozen=True)
class GaussianLatent:
    """A Gaussian latent with class-dependent mean and a shared standard deviation."""

    name: str
    mean_benign: float
    mean_malignant: float
    sd: float

    def sample(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mean = np.where(y == 1, self.mean_malignant, self.mean_benign)
        return rng.normal(mean, self.sd)

    def log_likelihood_ratio(self, x: np.ndarray) -> np.ndarray:
        """log p(x | malignant) - log p(x | benign)."""
        x = np.asarray(x, dtype=float)
        return ((x - self.mean_benign) ** 2 - (x - self.mean_malignant) ** 2) / (2 * self.sd**2)


@dataclass(frozen=True)
class BernoulliLatent:
    """A binary latent with class-dependent probability of being 1."""

    name: str
    p_benign: float
    p_malignant: float

    def sample(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = np.where(y == 1, self.p_malignant, self.p_benign)
        return (rng.random(len(y)) < p).astype(int)

    def log_likelihood_ratio(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=int)
        return np.where(
            x == 1,
            np.log(self.p_malignant / self.p_benign),
            np.log((1 - self.p_malignant) / (1 - self.p_benign)),
        )


@dataclass(frozen=True)
class CategoricalLatent:
    """A categorical latent (codes 0..K-1) with class-dependent category probabilities."""

    name: str
    categories: tuple[str, ...]
    p_benign: tuple[float, ...]
    p_malignant: tuple[float, ...]

    def sample(self, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        k = len(self.categories)
        codes_b = rng.choice(k, size=len(y), p=self.p_benign)
        codes_m = rng.choice(k, size=len(y), p=self.p_malignant)
        return np.where(y == 1, codes_m, codes_b)

    def log_likelihood_ratio(self, x: np.ndarray) -> np.ndarray:
        ratio = np.log(np.asarray(self.p_malignant) / np.asarray(self.p_benign))
        return ratio[np.asarray(x, dtype=int)]


Latent = GaussianLatent | BernoulliLatent | CategoricalLatent

#: Class-informative latents. Continuous shape properties live on a raw
#: (real-line) scale; renderers squash them with a sigmoid. Magnitudes follow
#: the direction of the BI-RADS lexicon and the epidemiology (malignant lesions
#: are larger, more irregular, spiculated, non-parallel, shadowing, hypoechoic,
#: more often with microcalcifications; patients older, more often with a
#: family history), not any particular cohort.
LATENTS: tuple[Latent, ...] = (
    GaussianLatent("log_size_mm", np.log(13.0), np.log(16.5), 0.35),
    GaussianLatent("irregularity_raw", -0.4, 0.4, 1.0),
    GaussianLatent("spiculation_raw", -0.5, 0.5, 1.0),
    BernoulliLatent("microcalcifications", 0.15, 0.38),
    CategoricalLatent("density", ("a", "b", "c", "d"), (0.15, 0.40, 0.35, 0.10), (0.08, 0.34, 0.42, 0.16)),
    BernoulliLatent("nonparallel", 0.18, 0.45),
    CategoricalLatent(
        "posterior_features", ("enhancement", "none", "shadowing"), (0.40, 0.40, 0.20), (0.15, 0.40, 0.45)
    ),
    GaussianLatent("hypoechogenicity_raw", -0.4, 0.4, 1.0),
    GaussianLatent("age", 51.0, 58.0, 11.0),
    GaussianLatent("bmi", 25.5, 27.5, 4.5),
    BernoulliLatent("family_history", 0.10, 0.22),
)
_BY_NAME = {latent.name: latent for latent in LATENTS}

#: Which latents each modality can observe (through its noisy rendering).
MODALITY_LATENTS: dict[str, tuple[str, ...]] = {
    "mammography": ("log_size_mm", "irregularity_raw", "spiculation_raw", "microcalcifications", "density"),
    "ultrasound": ("log_size_mm", "irregularity_raw", "nonparallel", "posterior_features", "hypoechogenicity_raw"),
    "clinical": ("age", "bmi", "family_history", "menopausal", "palpable"),
}

# Conditional (class-free) latents: menopausal | age and palpable | size.
_MENOPAUSE_AGE, _MENOPAUSE_SCALE = 51.0, 2.5
_PALPABLE_SIZE_MM, _PALPABLE_SCALE = 16.0, 3.0


def _p_menopausal(age: np.ndarray) -> np.ndarray:
    return expit((np.asarray(age) - _MENOPAUSE_AGE) / _MENOPAUSE_SCALE)


def _p_palpable(log_size_mm: np.ndarray) -> np.ndarray:
    return expit((np.exp(np.asarray(log_size_mm)) - _PALPABLE_SIZE_MM) / _PALPABLE_SCALE)


def sample_latents(n: int, *, prevalence: float, rng: np.random.Generator) -> pd.DataFrame:
    """Draw ``n`` subjects' labels and latent lesion properties.

    Args:
        n: number of subjects.
        prevalence: P(malignant), in (0, 1).
        rng: the random generator (the only source of randomness).

    Returns:
        One row per subject: ``label`` (1 = malignant) and one column per latent,
        including ``menopausal`` and ``palpable``.
    """
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence should be in (0, 1), got {prevalence}")
    y = (rng.random(n) < prevalence).astype(int)
    frame = pd.DataFrame({"label": y})
    for latent in LATENTS:
        frame[latent.name] = latent.sample(y, rng)
    frame["menopausal"] = (rng.random(n) < _p_menopausal(frame["age"])).astype(int)
    frame["palpable"] = (rng.random(n) < _p_palpable(frame["log_size_mm"])).astype(int)
    return frame


def _palpable_llr(palpable: np.ndarray) -> np.ndarray:
    """LLR of palpability alone, integrating size out under each class (1-D quadrature)."""
    size = _BY_NAME["log_size_mm"]
    grid = np.linspace(size.mean_benign - 6 * size.sd, size.mean_malignant + 6 * size.sd, 4001)
    p_grid = _p_palpable(grid)

    def p_palpable_given(mean: float) -> float:
        w = np.exp(-0.5 * ((grid - mean) / size.sd) ** 2)
        return float((w * p_grid).sum() / w.sum())

    p_b, p_m = p_palpable_given(size.mean_benign), p_palpable_given(size.mean_malignant)
    palpable = np.asarray(palpable, dtype=int)
    return np.where(palpable == 1, np.log(p_m / p_b), np.log((1 - p_m) / (1 - p_b)))


def oracle_posterior(
    latents: pd.DataFrame, *, prevalence: float, observed: tuple[str, ...] | None = None
) -> np.ndarray:
    """Exact P(malignant | observed latents) under the generative model.

    Args:
        latents: a frame from :func:`sample_latents`.
        prevalence: the prior P(malignant) the cohort was drawn with.
        observed: latent names to condition on; ``None`` means all of them
            (the Bayes-optimal oracle). A modality's tuple from
            ``MODALITY_LATENTS`` gives that modality's own ceiling.

    Returns:
        Array of shape (n,) with posteriors in (0, 1).
    """
    names = tuple(_BY_NAME) if observed is None else observed
    log_odds = np.full(len(latents), logit(prevalence))
    for name in names:
        if name in _BY_NAME:
            log_odds += _BY_NAME[name].log_likelihood_ratio(latents[name].to_numpy())
        elif name == "palpable":
            # Palpability only informs through size; it adds evidence only when size is unseen.
            if "log_size_mm" not in names:
                log_odds += _palpable_llr(latents["palpable"].to_numpy())
        elif name == "menopausal":
            continue  # depends on age alone: no class information given age
        else:
            raise KeyError(f"unknown latent {name!r}; known: {sorted(_BY_NAME) + ['menopausal', 'palpable']}")
    if "menopausal" in names and "age" not in names:
        raise ValueError("conditioning on 'menopausal' without 'age' is not supported")
    return expit(log_odds)

"""Render synthetic mammograms and ultrasound frames from latent lesion properties.

The renderers are deliberately simple physics caricatures, good enough that a
small CNN has to *learn* the cues a radiologist reads:

* mammography (CC and MLO): a breast outline on a dark background, a
  fibroglandular texture whose amount follows breast density, a dense mass whose
  border is lobulated by shape irregularity and radiates spicules with
  spiculation, and a cluster of bright microcalcification specks;
* ultrasound: layered tissue under multiplicative speckle, a hypoechoic lesion
  whose darkness follows echogenicity and whose long axis is parallel or not
  to the skin, and a posterior acoustic shadow or enhancement below it.

Every image draws its own placement and noise, so two views of one lesion
differ the way two acquisitions do. Intensities are floats in [0, 1].

With ``return_mask=True`` a renderer also returns the lesion's pixel mask (the
ground truth that explanation faithfulness is scored against). The mask is
computed from the same geometry and draws nothing from ``rng``, so the image
is the same with or without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit

__all__ = ["LesionShape", "render_mammogram", "render_ultrasound", "MAMMO_FIELD_MM", "US_FIELD_MM"]

#: Width of tissue an image covers, in mm (sets the lesion's size in pixels).
MAMMO_FIELD_MM = 38.0
US_FIELD_MM = 40.0
_DENSITY_FIBROGLANDULAR = (0.15, 0.35, 0.60, 0.85)  # BI-RADS density a..d


@dataclass(frozen=True)
class LesionShape:
    """Shape of one lesion, shared by all images of it (views, frames).

    Attributes:
        lobe_amplitudes: relative amplitude of boundary harmonics 2..5.
        lobe_phases: phase (radians) of each harmonic.
        spicule_angles: direction (radians) of each spicule.
    """

    lobe_amplitudes: np.ndarray
    lobe_phases: np.ndarray
    spicule_angles: np.ndarray

    @classmethod
    def draw(cls, *, n_spicules: int, rng: np.random.Generator) -> "LesionShape":
        return cls(
            lobe_amplitudes=rng.uniform(0.5, 1.0, 4) / np.sqrt(np.arange(2, 6)),
            lobe_phases=rng.uniform(0, 2 * np.pi, 4),
            spicule_angles=rng.uniform(0, 2 * np.pi, n_spicules),
        )

    def radius(self, theta: np.ndarray, irregularity: float) -> np.ndarray:
        """Relative boundary radius at angle ``theta`` (1 = a circle)."""
        k = np.arange(2, 6)[:, None, None]
        harmonics = self.lobe_amplitudes[:, None, None] * np.cos(k * theta + self.lobe_phases[:, None, None])
        return 1.0 + 0.45 * irregularity * harmonics.sum(axis=0)


def _grid(px: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32)
    return yy, xx


def _texture(px: int, rng: np.random.Generator, sigmas: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-sd smooth random texture summed over scales."""
    out = np.zeros((px, px), np.float32)
    for i, sigma in enumerate(sigmas):
        field = gaussian_filter(rng.standard_normal((px, px)).astype(np.float32), sigma)
        out += field / (field.std() + 1e-8) / (i + 1)
    return out / (out.std() + 1e-8)


def _segment_distance(yy, xx, y0, x0, y1, x1):
    """Distance from every pixel to the segment (y0, x0)-(y1, x1)."""
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx + 1e-8), 0.0, 1.0)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def render_mammogram(
    *,
    size_mm: float,
    irregularity: float,
    spiculation: float,
    microcalcifications: bool,
    density: int,
    shape: LesionShape,
    view: str,
    rng: np.random.Generator,
    px: int = 128,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one mammographic view (left breast, chest wall on the left edge).

    Args:
        size_mm: lesion diameter in mm.
        irregularity: shape irregularity in [0, 1] (lobulation of the border).
        spiculation: margin spiculation in [0, 1] (number and length of spicules).
        microcalcifications: whether a cluster of calcification specks is present.
        density: BI-RADS density code 0..3 (a..d); denser tissue hides the mass.
        shape: the lesion's shape, shared across views.
        view: ``"CC"`` or ``"MLO"`` (MLO adds the pectoral muscle wedge).
        rng: random generator for placement and noise.
        px: output side in pixels.
        return_mask: also return the lesion mask: the mass and its spicules
            (calcification specks, which scatter around the mass, are not in it).

    Returns:
        float32 array (px, px) in [0, 1]; with ``return_mask``, a pair
        (image, bool mask (px, px)).
    """
    yy, xx = _grid(px)
    u, v = xx / px, yy / px
    half_height = rng.uniform(0.44, 0.49)
    depth = rng.uniform(0.85, 0.97)
    breast = (u / depth) ** 2 + ((v - 0.5) / half_height) ** 2 <= 1.0
    fibro = _DENSITY_FIBROGLANDULAR[density]
    texture = _texture(px, rng, (px / 20, px / 60))
    tissue = 0.22 + 0.30 * fibro + 0.09 * (0.4 + fibro) * texture
    if view == "MLO":
        pectoral = u < 0.35 * (1 - v / 0.6)
        tissue = np.where(pectoral, 0.75 + 0.03 * texture, tissue)
    image = np.where(breast, tissue, 0.03)

    px_per_mm = px / MAMMO_FIELD_MM
    r0 = 0.5 * size_mm * px_per_mm
    cy = rng.uniform(0.3, 0.7) * px
    cx = rng.uniform(0.3, 0.6) * depth * px
    theta = np.arctan2(yy - cy, xx - cx)
    rr = np.hypot(yy - cy, xx - cx)
    boundary = r0 * shape.radius(theta, irregularity)
    mass = expit((boundary - rr) / 0.7)

    n_spicules = int(round(len(shape.spicule_angles) * spiculation))
    spicules = np.zeros_like(image)
    for angle in shape.spicule_angles[:n_spicules]:
        length = r0 * rng.uniform(0.5, 1.1) * (0.5 + spiculation)
        y0, x0 = cy + 0.8 * r0 * np.sin(angle), cx + 0.8 * r0 * np.cos(angle)
        y1, x1 = cy + (r0 + length) * np.sin(angle), cx + (r0 + length) * np.cos(angle)
        spicules = np.maximum(spicules, np.exp(-(_segment_distance(yy, xx, y0, x0, y1, x1) ** 2) / 4.0))
    image = image + 0.40 * np.maximum(mass, 0.8 * spicules)

    if microcalcifications:
        n_specks = 6 + rng.poisson(6)
        sy = cy + rng.normal(0, 0.7 * r0, n_specks)
        sx = cx + rng.normal(0, 0.7 * r0, n_specks)
        specks = np.zeros_like(image)
        for y, x in zip(sy, sx, strict=True):
            specks = np.maximum(specks, np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.0))
        image = image + 0.7 * specks

    image = image + rng.normal(0, 0.025, image.shape)
    image = np.clip(np.where(breast, image, 0.03 + rng.normal(0, 0.01, image.shape)), 0, 1).astype(np.float32)
    if return_mask:
        return image, ((mass >= 0.5) | (spicules >= 0.5)) & breast
    return image


def render_ultrasound(
    *,
    size_mm: float,
    irregularity: float,
    nonparallel: bool,
    posterior: int,
    hypoechogenicity: float,
    shape: LesionShape,
    rng: np.random.Generator,
    px: int = 128,
    return_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one B-mode ultrasound frame (skin at the top).

    Args:
        size_mm: lesion diameter in mm (equivalent circle).
        irregularity: shape irregularity in [0, 1].
        nonparallel: True when the long axis is perpendicular to the skin
            ("taller than wide").
        posterior: 0 enhancement, 1 none, 2 shadowing.
        hypoechogenicity: in [0, 1]; higher is darker relative to the tissue.
        shape: the lesion's shape, shared across frames.
        rng: random generator for placement and speckle.
        px: output side in pixels.
        return_mask: also return the lesion mask (the hypoechoic mass; the
            posterior shadow or enhancement below it is not in it).

    Returns:
        float32 array (px, px) in [0, 1]; with ``return_mask``, a pair
        (image, bool mask (px, px)).
    """
    yy, xx = _grid(px)
    depth = yy / px
    layers = 0.35 + 0.25 * expit((depth - rng.uniform(0.12, 0.22)) / 0.03) - 0.1 * depth
    tissue = layers * (1 + 0.15 * _texture(px, rng, (px / 25,)))

    px_per_mm = px / US_FIELD_MM
    r_eq = 0.5 * size_mm * px_per_mm
    aspect = rng.uniform(1.15, 1.5) if nonparallel else rng.uniform(0.5, 0.8)  # height / width
    half_w, half_h = r_eq / np.sqrt(aspect), r_eq * np.sqrt(aspect)
    cy = rng.uniform(0.38, 0.52) * px
    cx = rng.uniform(0.35, 0.65) * px
    theta = np.arctan2((yy - cy) / half_h, (xx - cx) / half_w)
    rr = np.hypot((yy - cy) / half_h, (xx - cx) / half_w)
    lesion = expit((shape.radius(theta, irregularity) - rr) / 0.06)
    lesion_level = 0.55 - 0.45 * hypoechogenicity
    image = tissue * (1 - lesion * (1 - lesion_level))

    below = np.clip((yy - cy - 0.7 * half_h) / (px * 0.25), 0, None)
    column = np.exp(-(((xx - cx) / (0.8 * half_w)) ** 4))
    posterior_effect = column * (below > 0) * np.exp(-below) * (1 - lesion)
    gain = (+0.8, 0.0, -0.7)[posterior]
    image = image * (1 + gain * posterior_effect)

    speckle = gaussian_filter(rng.rayleigh(1.0, (px, px)).astype(np.float32), (0.6, 1.2))
    image = image * speckle / speckle.mean()
    image = image * np.exp(-0.6 * depth)
    image = np.clip(image, 0, 1).astype(np.float32)
    if return_mask:
        return image, lesion >= 0.5
    return image

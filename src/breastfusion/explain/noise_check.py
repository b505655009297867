"""Sanity check of the modality Shapley values: a modality made of pure noise should get almost nothing.

A synthetic cohort is written with its ultrasound frames replaced by pixel noise (or left as
rendered, the control) and a clinical marker that carries the label (``y + N(0, marker_sd)``); an
ultrasound + clinical network is trained on the first subjects and its exact Shapley values are
computed on the held-out ones. Used by ``tests/explain/test_shapley.py`` and
``bench/explain_noise_share.py``.

What the share of the noise modality measures, and what keeps it small:

* the network must have met missing modalities in training (``modality_dropout`` > 0), or
  every coalition but the full one is an input it never saw;
* the empty coalition must be worth the no-information prediction
  (:func:`~breastfusion.explain.shapley.no_information_prob`), not the never-trained intercept;
* what remains is the network's own response to the noise when the noise is all it is shown
  (the single-modality coalition), which Shapley values report faithfully and which only a network
  that learned to ignore the noise removes: enough training subjects and epochs. With 600 training
  subjects and 40 epochs (gated fusion, modality dropout 0.5) the noise got 1.7% of the output change
  on held-out lesions (0.9–2.1% over 3 cohorts x 2 seeds on one thread, 1.9–5.4% on two), the rendered
  ultrasound 27.1%; with 150 subjects and 16 epochs the noise got 7.2%. Most of what is left is a
  constant offset: the ultrasound-only coalition predicts about 0.01 above the no-information value
  for every lesion (bench/explain_noise_share.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

__all__ = ["noise_cohort", "noise_modality_shares"]

MODALITIES = ("ultrasound", "clinical")


def noise_cohort(root: str | Path, *, n_subjects: int = 800, noise: bool = True, marker_sd: float = 0.7,
                 image_px: int = 32, seed: int = 3):
    """Write the synthetic cohort of the check and return it loaded, clinical marker added.

    Args:
        root: folder to write the cohort into.
        n_subjects: subjects (one lesion each).
        noise: replace every ultrasound frame by uniform pixel noise (False: the control, frames as rendered).
        marker_sd: noise of the clinical marker ``y + N(0, marker_sd)``.
        image_px: side of the rendered images.
        seed: seed of the cohort, the noise and the marker.

    Returns:
        The :class:`~breastfusion.data.manifest.Cohort`, with a ``marker`` column in its clinical table.
    """
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort

    generate_cohort(root, n_subjects=n_subjects, seed=seed, image_px=image_px, masks=False)
    cohort = load_cohort(root)
    rng = np.random.default_rng(seed)
    if noise:
        for path in cohort.manifest.loc[cohort.manifest["modality"] == "ultrasound", "path"]:
            Image.fromarray(rng.integers(0, 256, (image_px, image_px), dtype=np.uint8)).save(path)
    y = cohort.lesions.set_index("subject_id").loc[cohort.clinical["subject_id"], "y"].to_numpy().copy()
    cohort.clinical["marker"] = y + rng.normal(0, marker_sd, len(y))
    return cohort


def noise_modality_shares(cohort, *, fusion: str = "gated", training: dict[str, Any] | None = None,
                          image_size: int = 16, encoder: str = "test_resnet", test_fraction: float = 0.25,
                          baseline: str = "prior", null_slot: bool = False, seed: int = 0) -> dict[str, Any]:
    """Train an ultrasound + clinical network on a cohort of :func:`noise_cohort`; Shapley shares on held-out lesions.

    Args:
        cohort: from :func:`noise_cohort`.
        fusion: ``concat``, ``gated`` or ``late``.
        training: overrides of the training config (epochs, lr, weight_decay, modality_dropout ...).
        image_size: the ultrasound branch's input side.
        encoder: the ultrasound encoder (from the zoo).
        test_fraction: share of the subjects (the last ones; the generator draws them i.i.d.) held out.
        baseline: value of the empty coalition: ``"prior"`` (the no-information prediction of the
            training labels) or ``"network"`` (the network's output with every modality masked).
        null_slot: gated fusion with a learned no-information slot
            (:class:`~breastfusion.models.fusion.GatedFusion`).
        seed: seed of initialisation and training.

    Returns:
        ``share`` {modality: percent}, ``share_by_baseline`` (the shares under both baselines),
        ``mean_phi`` and ``mean_abs_phi`` {modality: float}, ``efficiency_max_error``, ``empty``,
        ``auc`` (held-out), ``gate_weights`` (gated/late fusion), ``coalitions`` (mean and sd over
        lesions of each coalition's P(malignant)) and ``n_test``.

    Raises:
        ValueError: unknown baseline.
    """
    from breastfusion.config import load_config
    from breastfusion.data.clinical_features import ClinicalPreprocessor
    from breastfusion.data.tensors import LesionDataset, build_lesion_images, clinical_features_for
    from breastfusion.experiment.crossval import preprocessing_params
    from breastfusion.explain.shapley import (coalition_values, gate_weights, modality_shapley, no_information_prob,
                                              shapley_shares)
    from breastfusion.models.fusion import create_fusion
    from breastfusion.models.network import build_network
    from breastfusion.data.transforms import prepare_batch
    from breastfusion.training.fit import fit_predict

    if baseline not in ("prior", "network"):
        raise ValueError(f"baseline should be 'prior' or 'network', got {baseline!r}")
    branch = {"encoder": encoder, "encoder_kwargs": {}, "image_size": image_size}
    config = load_config(None, model={"ultrasound": branch, "fusion": fusion}, cache=False,
                         training={"batch_size": 16, **(training or {})})
    lesions, clinical = cohort.lesions, cohort.clinical
    images = build_lesion_images(cohort, preprocessing_params(config, ["ultrasound"]))
    n = len(lesions)
    n_test = max(2, int(round(n * test_fraction)))
    train, test = np.arange(n - n_test), np.arange(n - n_test, n)
    labels = lesions["y"].to_numpy()
    pre = ClinicalPreprocessor().fit(clinical[clinical["subject_id"].isin(lesions["subject_id"].iloc[train])])
    features, present = clinical_features_for(lesions, clinical, pre)

    def data(index: np.ndarray) -> LesionDataset:
        return LesionDataset(images, index, labels[index], MODALITIES, features[index], present[index])

    torch.manual_seed(seed)
    net = build_network(MODALITIES, config.model, pre.n_features_)
    if null_slot:
        net.fusion = create_fusion(fusion, {m: b.out_features for m, b in net.branches.items()},
                                   dropout=config.model.dropout, hidden=config.model.fusion_hidden, null_slot=True)
    prob = fit_predict(net, data(train), data(test), config.training, seed=seed)
    prior = no_information_prob(labels[train], sampler=config.training.sampler,
                                class_weights=config.training.class_weights)
    batch = prepare_batch(data(test).tensors)
    empties = {"prior": prior, "network": None}
    phis = {b: modality_shapley(net.eval(), batch, empty=e) for b, e in empties.items()}
    phi, shares = phis[baseline], shapley_shares(phis[baseline])[1]
    columns = [f"phi_{m}" for m in MODALITIES]
    gates = gate_weights(net, batch)
    values = coalition_values(net, batch, empty=empties[baseline])
    return {
        "coalitions": {"+".join(sorted(k)) or "none": {"mean": float(v.mean()), "sd": float(v.std())}
                       for k, v in values.items()},
        "share": shares, "share_by_baseline": {b: shapley_shares(p)[1] for b, p in phis.items()},
        "mean_phi": {m: float(phi[f"phi_{m}"].mean()) for m in MODALITIES},
        "mean_abs_phi": {m: float(phi[f"phi_{m}"].abs().mean()) for m in MODALITIES},
        "efficiency_max_error": float((phi[columns].sum(axis=1) - (phi["full"] - phi["empty"])).abs().max()),
        "empty": float(phi["empty"].mean()), "auc": float(roc_auc_score(labels[test], prob)),
        "gate_weights": (None if gates is None
                         else {c.removeprefix("gate_"): float(v) for c, v in gates.mean().items()}),
        "n_test": int(len(test)),
    }

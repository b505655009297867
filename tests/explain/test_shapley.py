"""Exact modality Shapley values: efficiency, the missing-modality mechanism, a noise modality gets ~nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from breastfusion.config import load_config
from breastfusion.explain.shapley import coalition_values, gate_weights, modality_shapley, shapley_shares
from breastfusion.models.network import build_network

from ..conftest import TINY_MODEL

MODALITIES = ("mammography", "ultrasound", "clinical")


def _net(fusion: str, seed: int = 0):
    torch.manual_seed(seed)
    model = load_config(None, model={**TINY_MODEL, "fusion": fusion}).model
    return build_network(MODALITIES, model, n_clinical_features=5).eval()


def _batch(b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"mammography": torch.randn(b, 2, 1, 32, 32, generator=g),
             "mammography_views": torch.ones(b, 2, dtype=torch.bool),
             "ultrasound": torch.randn(b, 1, 1, 32, 32, generator=g),
             "ultrasound_views": torch.ones(b, 1, dtype=torch.bool),
             "clinical": torch.randn(b, 5, generator=g), "clinical_present": torch.ones(b, dtype=torch.bool)}
    batch["mammography_views"][0, 1] = False  # one view missing
    batch["ultrasound_views"][1] = False  # a lesion without ultrasound
    batch["clinical_present"][2] = False  # a subject without clinical data
    return batch


@pytest.mark.parametrize("fusion", ["concat", "gated", "late"])
def test_efficiency_values_sum_to_full_minus_empty(fusion):
    net, batch = _net(fusion), _batch()
    with torch.no_grad():
        logits = net(batch).double()
    for scale, expected in (("prob", torch.sigmoid(logits)), ("logit", logits)):
        phi = modality_shapley(net, batch, scale=scale)
        total = phi[[f"phi_{m}" for m in MODALITIES]].sum(axis=1)
        np.testing.assert_allclose(total, phi["full"] - phi["empty"], atol=1e-9)
        assert (phi["full"] - phi["empty"]).abs().max() > 1e-4  # not trivially zero
        np.testing.assert_allclose(phi["full"], expected.numpy(), atol=1e-6)


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_coalitions_equal_the_network_on_a_batch_with_modalities_marked_missing(fusion):
    net, batch = _net(fusion), _batch()
    fast = coalition_values(net, batch, reuse_branches=True)
    slow = coalition_values(net, batch, reuse_branches=False)
    assert len(fast) == 2 ** len(MODALITIES)
    for coalition in fast:
        np.testing.assert_allclose(fast[coalition].numpy(), slow[coalition].numpy(), atol=1e-6)


def test_a_modality_the_lesion_lacks_gets_zero():
    phi = modality_shapley(_net("concat"), _batch())
    assert phi.loc[1, "phi_ultrasound"] == 0 and phi.loc[2, "phi_clinical"] == 0


def test_concat_fusion_is_additive_on_the_logit_scale():
    """A linear head over masked features: each modality's value is its own effect against the empty input."""
    net, batch = _net("concat"), _batch()
    values = coalition_values(net, batch, scale="logit")
    phi = modality_shapley(net, batch, scale="logit")
    for m in MODALITIES:
        np.testing.assert_allclose(phi[f"phi_{m}"], (values[frozenset([m])] - values[frozenset()]).numpy(),
                                   atol=1e-6)  # float32 network


def test_shares_are_percentages_of_the_absolute_change():
    phi = modality_shapley(_net("gated"), _batch())
    per_lesion, cohort = shapley_shares(phi)
    np.testing.assert_allclose(per_lesion.sum(axis=1), 100.0)
    assert sum(cohort.values()) == pytest.approx(100.0)
    mean_abs = phi[[f"phi_{m}" for m in MODALITIES]].abs().mean()
    assert cohort["clinical"] == pytest.approx(100 * mean_abs["phi_clinical"] / mean_abs.sum())


def test_gate_weights_only_for_fusions_that_weigh_modalities():
    assert gate_weights(_net("concat"), _batch()) is None
    for fusion in ("gated", "late"):
        gates = gate_weights(_net(fusion), _batch())
        np.testing.assert_allclose(gates.sum(axis=1), 1.0, atol=1e-6)
        assert gates.loc[1, "gate_ultrasound"] == 0 and gates.loc[2, "gate_clinical"] == 0


def test_a_pure_noise_modality_gets_a_near_zero_share(tmp_path):
    """Ultrasound replaced by pixel noise, clinical data carrying a strong marker: held-out lesions' ultrasound
    share is small, and the gated fusion's own weights agree."""
    from breastfusion.data.clinical import ClinicalPreprocessor
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.data.tensors import LesionDataset, build_lesion_images, clinical_features_for
    from breastfusion.evaluation.crossval import preprocessing_params
    from breastfusion.run_artifacts import prepare_batch
    from breastfusion.training.fit import fit_predict

    n = 200
    generate_cohort(tmp_path, n_subjects=n, seed=3, image_px=32, masks=False)
    cohort = load_cohort(tmp_path)
    rng = np.random.default_rng(0)
    for path in cohort.manifest.loc[cohort.manifest["modality"] == "ultrasound", "path"]:
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    lesions, clinical = cohort.lesions, cohort.clinical.copy()
    y = lesions.set_index("subject_id").loc[clinical["subject_id"], "y"].to_numpy()
    clinical["marker"] = y + rng.normal(0, 0.7, len(y))
    modalities = ("ultrasound", "clinical")
    model = {"ultrasound": {**TINY_MODEL["ultrasound"], "image_size": 16}, "fusion": "gated"}
    config = load_config(None, model=model, cache=False, training={
        "epochs": 8, "batch_size": 16, "lr": 0.01, "weight_decay": 0.05, "modality_dropout": 0.5})
    images = build_lesion_images(cohort, preprocessing_params(config, ["ultrasound"]))
    pre = ClinicalPreprocessor().fit(clinical)
    features, present = clinical_features_for(lesions, clinical, pre)
    train, test = np.arange(3 * n // 4), np.arange(3 * n // 4, n)

    def data(index):
        return LesionDataset(images, index, lesions["y"].to_numpy()[index], modalities, features[index],
                             present[index])

    torch.manual_seed(0)
    net = build_network(modalities, config.model, pre.n_features_)
    fit_predict(net, data(train), data(test), config.training, seed=0)
    batch = prepare_batch(data(test).tensors)
    phi = modality_shapley(net.eval(), batch)
    _, shares = shapley_shares(phi)
    np.testing.assert_allclose(phi[["phi_ultrasound", "phi_clinical"]].sum(axis=1), phi["full"] - phi["empty"],
                               atol=1e-9)
    assert shares["ultrasound"] < 15 and shares["clinical"] > 85, shares
    gates = gate_weights(net, batch).mean()
    assert gates["gate_ultrasound"] < gates["gate_clinical"]

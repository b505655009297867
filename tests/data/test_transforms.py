"""Batch transforms: the one preparation every consumer of a network's inputs goes through."""

from __future__ import annotations

import pytest
import torch

from breastfusion.data.transforms import MEAN, STD, AffineRanges, augment_images, mix_batch, prepare_batch
from breastfusion.training.module import LesionClassifier


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"mammography": torch.randint(0, 256, (4, 2, 1, 16, 16), dtype=torch.uint8, generator=g),
            "mammography_views": torch.ones(4, 2, dtype=torch.bool),
            "ultrasound": torch.randint(0, 256, (4, 1, 1, 16, 16), dtype=torch.uint8, generator=g),
            "ultrasound_views": torch.ones(4, 1, dtype=torch.bool),
            "clinical": torch.randn(4, 3, generator=g), "clinical_present": torch.ones(4, dtype=torch.bool)}


class _Branches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.branches = torch.nn.ModuleDict({m: torch.nn.Identity() for m in ("mammography", "ultrasound",
                                                                                "clinical")})


def test_evaluation_preparation_scales_images_only_and_leaves_the_batch_alone():
    batch = _batch()
    before = {k: v.clone() for k, v in batch.items()}
    out = prepare_batch(batch)
    for m in ("mammography", "ultrasound"):
        assert out[m].dtype == torch.float32
        torch.testing.assert_close(out[m], (before[m].float() / 255.0 - MEAN) / STD, rtol=0, atol=0)
    assert out["clinical"] is batch["clinical"] and out["mammography_views"] is batch["mammography_views"]
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # the input is not modified


def test_the_training_module_prepares_through_the_same_function():
    """Training batches (augmentation, modality dropout) are prepare_batch's, draw for draw; evaluation ones equal."""
    module = LesionClassifier(_Branches(), lr=1.0, weight_decay=0.0, epochs=1, augment=True, modality_dropout=0.5)
    batch = _batch()
    torch.manual_seed(3)
    trained = module._prepare(batch, train=True)
    torch.manual_seed(3)
    direct = prepare_batch(batch, augment=True, modality_dropout=0.5,
                           modalities=("mammography", "ultrasound", "clinical"))
    assert all(torch.equal(trained[k], direct[k]) for k in trained)
    evaluated = module._prepare(batch, train=False)
    assert all(torch.equal(evaluated[k], prepare_batch(batch)[k]) for k in evaluated)


def test_default_affine_ranges_are_the_historical_warp_and_wider_ranges_warp_further():
    """AffineRanges() draws the warp the augmentation always drew (rotation ±10°, scale ±10%, shift ±8%), so runs
    from before the ranges were settings augment bit for bit alike; zero ranges warp nothing, wider ones more."""
    x = torch.rand(64, 1, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    default = augment_images(x, modality="mammography")
    torch.manual_seed(5)
    explicit = augment_images(x, modality="mammography", ranges=AffineRanges(zoom=0.1, rotation=10.0, shift=0.08))
    assert torch.equal(default, explicit)

    # A smooth image, so the warp's interpolation error stays far below the change a warp makes.
    ramp = torch.linspace(0, 1, 24)
    smooth = (ramp[None, :] * ramp[:, None]).expand(64, 1, 1, 24, 24).contiguous()

    def warp_distance(ranges: AffineRanges) -> float:
        torch.manual_seed(7)
        # gain and speckle are multiplicative and the same draws for every range: compare against no warp
        warped = augment_images(smooth, modality="mammography", ranges=ranges)
        torch.manual_seed(7)
        still = augment_images(smooth, modality="mammography", ranges=AffineRanges(0.0, 0.0, 0.0))
        return float((warped - still).abs().mean())

    assert warp_distance(AffineRanges(0.0, 0.0, 0.0)) == 0.0
    assert 0 < warp_distance(AffineRanges()) < warp_distance(AffineRanges(zoom=0.3, rotation=30.0, shift=0.2))


def test_mixup_blends_images_features_and_labels_with_one_weight_and_keeps_presence():
    batch = prepare_batch(_batch())
    batch["ultrasound_views"] = torch.tensor([[True], [False], [True], [True]])
    batch["clinical_present"] = torch.tensor([True, True, False, True])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    torch.manual_seed(11)
    mixed, targets = mix_batch(batch, labels, alpha=0.4)
    torch.manual_seed(11)
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(4)
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(4))
    torch.testing.assert_close(targets, lam * labels + (1 - lam) * labels[perm])
    for key in ("mammography", "ultrasound", "clinical"):
        torch.testing.assert_close(mixed[key], lam * batch[key] + (1 - lam) * batch[key][perm])
    assert torch.equal(mixed["ultrasound_views"], batch["ultrasound_views"] | batch["ultrasound_views"][perm])
    assert torch.equal(mixed["clinical_present"], batch["clinical_present"] | batch["clinical_present"][perm])
    assert set(mixed) == set(batch)


def test_mixup_marks_a_lesion_only_where_both_samples_have_a_mask():
    batch = prepare_batch(_batch())
    batch["ultrasound_mask"] = torch.rand(4, 1, 1, 16, 16)
    batch["ultrasound_mask_views"] = torch.tensor([[True], [True], [False], [True]])
    torch.manual_seed(2)
    mixed, _ = mix_batch(batch, torch.zeros(4), alpha=1.0)
    torch.manual_seed(2)
    torch.distributions.Beta(1.0, 1.0).sample()
    perm = torch.randperm(4)
    assert torch.equal(mixed["ultrasound_mask_views"],
                       batch["ultrasound_mask_views"] & batch["ultrasound_mask_views"][perm])


def test_mixup_refuses_a_non_positive_concentration():
    with pytest.raises(ValueError, match="mixup alpha"):
        mix_batch(prepare_batch(_batch()), torch.zeros(4), alpha=0.0)


def test_the_training_step_fits_the_mixed_targets():
    """With mixup the loss is the BCE against the blended labels, on the blended batch."""

    class Mean(torch.nn.Module):
        branches = {}

        def forward(self, batch):
            return 20 * batch["ultrasound"].mean(dim=(1, 2, 3, 4))

    module = LesionClassifier(Mean(), lr=1.0, weight_decay=0.0, epochs=1, augment=False, mixup=0.4)
    module.log = lambda *a, **k: None
    batch = {k: v for k, v in _batch().items() if k.startswith("ultrasound")} | {
        "label": torch.tensor([1.0, 0.0, 0.0, 1.0])}
    torch.manual_seed(4)
    loss = module.training_step(batch, 0)
    torch.manual_seed(4)
    mixed, targets = mix_batch(prepare_batch(batch), batch["label"], 0.4)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(Mean()(mixed), targets)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(
        Mean()(prepare_batch(batch)), batch["label"]))

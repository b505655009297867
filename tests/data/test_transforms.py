"""Batch transforms: the one preparation every consumer of a network's inputs goes through."""

from __future__ import annotations

import torch

from breastfusion.data.transforms import MEAN, STD, prepare_batch
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

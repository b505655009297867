"""Networks: shapes for every modality subset, missing modalities masked, encoders by name."""

from __future__ import annotations

import itertools

import pytest
import torch

from breastfusion.config import load_config
from breastfusion.models.encoders import UnknownEncoderError, create_encoder
from breastfusion.models.network import build_network

from .conftest import TINY_MODEL

MODALITIES = ("mammography", "ultrasound", "clinical")
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(MODALITIES, r)]


def _batch(b: int = 4, present: bool = True) -> dict[str, torch.Tensor]:
    return {
        "mammography": torch.randn(b, 2, 1, 32, 32), "mammography_views": torch.full((b, 2), present),
        "ultrasound": torch.randn(b, 1, 1, 32, 32), "ultrasound_views": torch.full((b, 1), present),
        "clinical": torch.randn(b, 5), "clinical_present": torch.full((b,), present),
    }


@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_every_subset_gives_one_finite_logit_per_lesion(modalities):
    net = build_network(modalities, load_config(None, model=TINY_MODEL).model, n_clinical_features=5)
    out = net(_batch())
    assert out.shape == (4,) and torch.isfinite(out).all()


def test_a_missing_modality_does_not_change_the_output():
    """Whatever pixels sit in an absent modality's slots, the prediction is the same."""
    torch.manual_seed(0)
    net = build_network(MODALITIES, load_config(None, model=TINY_MODEL).model, n_clinical_features=5).eval()
    batch = _batch()
    batch["ultrasound_views"][:] = False
    other = dict(batch, ultrasound=torch.randn_like(batch["ultrasound"]) * 10)
    assert torch.allclose(net(batch), net(other))
    with_us = dict(batch, ultrasound_views=torch.ones_like(batch["ultrasound_views"]))
    assert not torch.allclose(net(batch), net(with_us))


def test_views_are_pooled_over_present_slots_only():
    torch.manual_seed(0)
    net = build_network(("mammography",), load_config(None, model=TINY_MODEL).model, 0).eval()
    batch = _batch()
    batch["mammography_views"][:, 1] = False
    changed = dict(batch, mammography=batch["mammography"].clone())
    changed["mammography"][:, 1] = 99.0
    assert torch.allclose(net(batch), net(changed))


def test_attention_view_pooling_ignores_absent_views_and_weighs_present_ones():
    torch.manual_seed(0)
    model = load_config(None, model={"mammography": {**TINY_MODEL["mammography"], "view_pooling": "attention"}}).model
    net = build_network(("mammography",), model, 0).eval()
    batch = _batch()
    batch["mammography_views"][:, 1] = False
    changed = dict(batch, mammography=batch["mammography"].clone())
    changed["mammography"][:, 1] = 99.0
    assert torch.allclose(net(batch), net(changed))
    both = dict(batch, mammography_views=torch.ones_like(batch["mammography_views"]))
    assert not torch.allclose(net(both), net(batch))


def test_unknown_encoder_suggests_names():
    with pytest.raises(UnknownEncoderError, match=r"unknown encoder 'resnet81'.*did you mean.*resnet18"):
        create_encoder("resnet81")


@pytest.mark.parametrize("attention", ["eca", "cbam"])
def test_attention_changes_the_features(attention):
    torch.manual_seed(0)
    plain = create_encoder("test_resnet").eval()
    torch.manual_seed(0)
    attended = create_encoder("test_resnet", attention=attention).eval()
    x = torch.randn(2, 1, 32, 32)
    assert attended(x).shape == plain(x).shape
    assert not torch.allclose(attended(x), plain(x))


def test_weights_load_only_from_a_local_file(tmp_path):
    source = create_encoder("test_resnet")
    torch.save(source.backbone.state_dict(), tmp_path / "w.pth")
    loaded = create_encoder("test_resnet", weights=tmp_path / "w.pth").eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(loaded(x), source.eval()(x))
    with pytest.raises(FileNotFoundError, match="local file only"):
        create_encoder("test_resnet", weights=tmp_path / "nope.pth")

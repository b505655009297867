"""Every zoo encoder × every attention: output shape, finite values, the feature map, the CAM target layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from breastfusion.models.attention import ATTENTIONS, count_parameters
from breastfusion.models.encoders import ImageEncoder, create_encoder
from breastfusion.models.zoo import FAMILIES, ZOO

SIZE = 32  # every zoo encoder reduces by 32 at most: a 1×1 final map (ViTs: 2×2 patches, dynamic size)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_encoder_gives_finite_features_of_its_size(name, attention):
    encoder = create_encoder(name, attention=attention).eval()
    x = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        feats = encoder(x)
        fmap = encoder.forward_map(x)
    assert isinstance(encoder, ImageEncoder)
    assert feats.shape == (2, encoder.num_features)
    assert torch.isfinite(feats).all()
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, encoder.map_features)
    assert isinstance(encoder.attention, nn.Identity) == (attention == "none")


def test_the_zoo_covers_the_families_we_promise():
    assert set(FAMILIES) == {"resnet", "convnext", "efficientnet", "densenet", "mobilenetv3", "vit"}
    for name in ("resnet18", "resnet34", "resnet50", "convnext_atto", "convnext_tiny", "efficientnet_b0",
                 "densenet121", "mobilenetv3_small_100", "vit_tiny_patch16_224", "resnet18_slim"):
        assert name in ZOO


def test_slim_aliases_are_their_architecture_with_fewer_channels():
    with torch.device("meta"):
        slim, full = create_encoder("resnet18_slim"), create_encoder("resnet18")
        convnext_slim = create_encoder("convnext_atto_slim")
    assert slim.num_features == 128 and full.num_features == 512
    assert convnext_slim.num_features == 128
    assert type(slim.backbone) is type(full.backbone)
    assert count_parameters(slim) < count_parameters(full) / 10


def test_user_kwargs_override_the_zoo_entry():
    encoder = create_encoder("resnet18_slim", channels=(8, 16, 32, 64))
    assert encoder.num_features == 64


def test_vit_takes_any_image_size_and_maps_patch_tokens():
    encoder = create_encoder("vit_tiny_patch16_224", attention="eca").eval()
    with torch.no_grad():
        for h, w in ((32, 32), (64, 48)):
            fmap = encoder.forward_map(torch.randn(1, 1, h, w))
            assert fmap.shape == (1, 192, h // 16, w // 16)


def test_three_channel_input():
    encoder = create_encoder("convnext_atto_slim", in_chans=3).eval()
    assert encoder(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 128)


def test_training_step_reaches_every_parameter():
    """A backward pass gives every parameter a finite gradient (nothing unused, e.g. for DDP)."""
    for name in ("resnet18_slim", "convnext_atto_slim", "mobilenetv3_small_050", "vit_tiny_patch16_224"):
        encoder = create_encoder(name, attention="cbam").train()
        encoder(torch.randn(2, 1, 32, 32)).square().mean().backward()
        lost = [n for n, p in encoder.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not lost, f"{name}: parameters without a finite gradient: {lost[:5]}"


def test_same_seed_same_encoder():
    torch.manual_seed(5)
    a = create_encoder("convnext_atto_slim", attention="cbam")
    torch.manual_seed(5)
    b = create_encoder("convnext_atto_slim", attention="cbam")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))

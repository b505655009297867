"""ECA and CBAM: they change the forward pass, sit where asked, and are refused where they cannot go."""

from __future__ import annotations

import pytest
import torch
from timm.layers import get_attn
from torch import nn

from breastfusion.models.attention import (
    STAGE_ATTENTION_FAMILIES,
    StageAttention,
    UnknownAttentionError,
    attention_modules,
    create_attention,
)
from breastfusion.models.encoders import create_encoder

# timm's small test models stand in for each family where the real ones are slow at this size.
# (A ViT pools its patch tokens, as the zoo's do, so that attention on their map reaches the output.)
FAMILY_MODELS = {"test_resnet": {}, "test_convnext": {}, "test_efficientnet": {}, "mobilenetv3_small_050": {},
                 "test_vit": {"global_pool": "avg", "dynamic_img_size": True}}


@pytest.mark.parametrize("attention", ["eca", "cbam"])
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_attention_changes_the_features(name, attention):
    encoder = create_encoder(name, attention=attention, **FAMILY_MODELS[name]).eval()
    assert isinstance(encoder.attention, get_attn(attention))
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        attended = encoder(x)
        encoder.attention = nn.Identity()  # the same weights without the module
        plain = encoder(x)
    assert attended.shape == plain.shape
    assert not torch.allclose(attended, plain, atol=1e-5)


@pytest.mark.parametrize("attention", ["eca", "cbam"])
def test_attention_modules_are_not_identity(attention):
    module = create_attention(attention, 32)
    x = torch.randn(2, 32, 8, 8)
    out = module(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert sum(p.numel() for p in module.parameters()) > 0


@pytest.mark.parametrize("attention", ["eca", "cbam"])
def test_attention_after_every_stage_of_a_resnet_sits_in_every_block(attention):
    encoder = create_encoder("resnet18_slim", attention=attention, attention_stages="all")
    kind = get_attn(attention)
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        blocks = list(getattr(encoder.backbone, layer))
        assert blocks and all(isinstance(block.se, kind) for block in blocks), layer
    assert isinstance(encoder.attention, kind)
    assert len(attention_modules(encoder)) == 8 + 1  # 2 blocks × 4 stages + the final map


@pytest.mark.parametrize(("name", "stages"), [
    ("convnext_atto_slim", ["stages.0", "stages.1", "stages.2"]),
    ("test_efficientnet", ["blocks.1", "blocks.2", "blocks.3"]),
    ("mobilenetv3_small_050", ["blocks.0", "blocks.1", "blocks.3"]),
    ("densenet121", ["features.denseblock1", "features.denseblock2", "features.denseblock3"]),
])
@pytest.mark.parametrize("attention", ["eca", "cbam"])
def test_attention_after_every_stage_wraps_each_feature_stage(name, stages, attention):
    plain = create_encoder(name, attention=attention).eval()
    encoder = create_encoder(name, attention=attention, attention_stages="all").eval()
    kind = get_attn(attention)
    modules = dict(encoder.backbone.named_modules())
    for stage in stages:
        assert isinstance(modules[stage], StageAttention), stage
        assert isinstance(modules[stage].attn, kind)
    assert isinstance(encoder.attention, kind)
    assert len(attention_modules(encoder)) == len(stages) + 1
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert encoder(x).shape == plain(x).shape


def test_stage_attention_is_refused_for_a_vit_naming_the_family():
    with pytest.raises(NotImplementedError, match=r"VisionTransformer family.*'resnet'"):
        create_encoder("test_vit", attention="eca", attention_stages="all")
    assert "vit" not in STAGE_ATTENTION_FAMILIES
    # Without attention there is nothing to place: accepted.
    create_encoder("test_vit", attention="none", attention_stages="all")


def test_attention_on_a_class_token_vit_is_refused():
    with pytest.raises(ValueError, match="global_pool='token'.*global_pool='avg'"):
        create_encoder("test_vit", attention="cbam", global_pool="token")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"attention": "se"}, r"attention should be one of \['none', 'eca', 'cbam'\], got 'se'"),
    ({"attention": "eca", "attention_stages": "every"},
     r"attention_stages should be one of \['last', 'all'\], got 'every'"),
])
def test_bad_attention_arguments(kwargs, match):
    with pytest.raises(UnknownAttentionError, match=match):
        create_encoder("test_resnet", **kwargs)

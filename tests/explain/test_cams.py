"""CAM heatmaps on one image of a multimodal network: the wrapper is the network, every method, every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breastfusion.config import load_config
from breastfusion.explain.cams import (CAM_METHODS, FINAL, EnsembleImageModel, OneImageModel, compute_cams,
                                       find_target_layer, find_target_layers, image_model)
from breastfusion.models.network import build_network

MODALITIES = ("mammography", "ultrasound", "clinical")


def _net(fusion="concat", encoder="test_resnet", size=32, kwargs=None):
    torch.manual_seed(0)
    branch = {"encoder": encoder, "encoder_kwargs": kwargs or {}, "image_size": size}
    model = load_config(None, model={"mammography": branch, "ultrasound": branch, "fusion": fusion}).model
    return build_network(MODALITIES, model, n_clinical_features=4).eval()


def _lesion(size=32):
    g = torch.Generator().manual_seed(1)
    return {"mammography": torch.randn(1, 2, 1, size, size, generator=g),
            "mammography_views": torch.ones(1, 2, dtype=torch.bool),
            "ultrasound": torch.randn(1, 1, 1, size, size, generator=g),
            "ultrasound_views": torch.ones(1, 1, dtype=torch.bool),
            "clinical": torch.randn(1, 4, generator=g), "clinical_present": torch.ones(1, dtype=torch.bool)}


@pytest.mark.parametrize("fusion", ["concat", "gated", "late"])
def test_one_image_model_is_the_network_with_everything_else_fixed(fusion):
    net, lesion = _net(fusion), _lesion()
    with torch.no_grad():
        full = net(lesion)
        for modality, slot in (("mammography", 0), ("mammography", 1), ("ultrasound", 0)):
            model = OneImageModel(net, lesion, modality, slot)
            torch.testing.assert_close(model(lesion[modality][0, slot][None])[:, 0], full)
            # another image in that slot changes only that image's contribution
            other = dict(lesion, **{modality: lesion[modality].clone()})
            other[modality][0, slot] = torch.randn_like(other[modality][0, slot])
            torch.testing.assert_close(model(other[modality][0, slot][None])[:, 0], net(other))


def test_every_method_gives_a_map_of_the_image_in_unit_range():
    net, lesion = _net(), _lesion()
    maps, logit = compute_cams(OneImageModel(net, lesion, "mammography", 1), tuple(CAM_METHODS))
    assert set(maps) == set(CAM_METHODS)
    for heat in maps.values():
        assert heat.shape == (32, 32) and np.isfinite(heat).all() and 0 <= heat.min() and heat.max() <= 1
        assert heat.max() > 0
    with torch.no_grad():
        assert logit == pytest.approx(float(net(lesion)[0]), abs=1e-5)


def test_score_cam_does_not_depend_on_its_batch_size():
    model = OneImageModel(_net(), _lesion(), "ultrasound", 0)
    a, _ = compute_cams(model, ("scorecam",), batch_size=7)
    b, _ = compute_cams(model, ("scorecam",), batch_size=512)
    np.testing.assert_allclose(a["scorecam"], b["scorecam"], atol=1e-5)


@pytest.mark.parametrize("encoder, kwargs", [
    ("test_resnet", {}), ("test_convnext", {}), ("test_efficientnet", {}), ("test_byobnet", {}),
    ("test_vit", {"img_size": 64}),
])
def test_target_layer_is_found_for_every_family(encoder, kwargs):
    net = _net(encoder=encoder, size=64, kwargs=kwargs)
    layer = find_target_layer(net.branches["ultrasound"].encoder, 64)
    assert layer.side >= 4 or layer.name == FINAL
    maps, _ = compute_cams(OneImageModel(net, _lesion(64), "ultrasound", 0), ("gradcam",), target_layer=layer)
    assert maps["gradcam"].shape == (64, 64) and np.isfinite(maps["gradcam"]).all()


def test_target_layer_choice_and_override():
    encoder = _net(size=64).branches["mammography"].encoder
    assert find_target_layer(encoder, 64).name == "backbone.layer3"  # layer4 would be 2x2 at 64 px
    assert find_target_layer(encoder, 128).name == FINAL  # the last map is 4x4: wide enough
    assert find_target_layer(encoder, 64, name="backbone.layer2").side == 8
    with pytest.raises(ValueError, match=r"not a module of the encoder.*backbone.layer4"):
        find_target_layer(encoder, 64, name="backbone.layer9")


def _ensemble():
    torch.manual_seed(0)
    branch = {"encoder": "test_resnet", "encoder_kwargs": {}, "image_size": 32}
    model = load_config(None, model={"mammography": branch, "ultrasound": branch}).model
    return build_network(MODALITIES, model, n_clinical_features=4, seeds=2).eval()


def test_a_seed_ensembles_heatmap_is_the_mean_of_its_members_maps_of_the_ensembles_class():
    ensemble, lesion = _ensemble(), _lesion()
    model = image_model(ensemble, lesion, "ultrasound", 0)
    assert isinstance(model, EnsembleImageModel)
    assert isinstance(image_model(ensemble.members[0], lesion, "ultrasound", 0), OneImageModel)
    with torch.no_grad():
        torch.testing.assert_close(model(model.image)[:, 0], ensemble(lesion))
    methods = ("gradcam", "scorecam")
    maps, logit = compute_cams(model, methods)
    with torch.no_grad():
        assert logit == pytest.approx(float(ensemble(lesion)[0]), abs=1e-5)
    category = 1 if logit >= 0 else 0
    singles = [compute_cams(OneImageModel(member, lesion, "ultrasound", 0), methods, target_class=category)[0]
               for member in ensemble.members]
    for method in methods:
        assert not np.allclose(singles[0][method], singles[1][method])
        np.testing.assert_allclose(maps[method], (singles[0][method] + singles[1][method]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="1 target layer"):
        compute_cams(model, ("gradcam",), target_layer=find_target_layers(model)[:1])

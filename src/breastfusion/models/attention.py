"""Attention modules (timm's ECA and CBAM) and where they go in a backbone.

* ECA — Wang et al., *ECA-Net: Efficient Channel Attention for Deep Convolutional
  Neural Networks*, CVPR 2020 (``timm.layers.eca.EcaModule``): the MPM-MU ultrasound branch.
* CBAM — Woo et al., *CBAM: Convolutional Block Attention Module*, ECCV 2018
  (``timm.layers.cbam.CbamModule``): channel then spatial attention, the MPM-MU mammography branch.

Placement (``attention_stages``): ``"last"`` puts one module on the final feature
map; ``"all"`` also puts one after every stage — inside every residual block for
ResNets (timm's ``block_args=dict(attn_layer=...)``, the way SE/ECA-ResNets are
built), and after each ``feature_info`` stage for ConvNeXt, EfficientNet,
DenseNet and MobileNetV3 (a :class:`StageAttention` wrapper).
"""

from __future__ import annotations

from timm.layers import get_attn
from timm.models.convnext import ConvNeXt
from timm.models.densenet import DenseNet
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from torch import Tensor, nn

__all__ = [
    "ATTENTIONS",
    "ATTENTION_STAGES",
    "STAGE_ATTENTION_FAMILIES",
    "UnknownAttentionError",
    "check_attention",
    "create_attention",
    "StageAttention",
    "stage_attention_family",
    "add_stage_attention",
    "attention_modules",
    "count_parameters",
]

ATTENTIONS = ("none", "eca", "cbam")
ATTENTION_STAGES = ("last", "all")

# Families whose stages take a wrapper (their feature_info modules return one NCHW tensor).
_WRAPPABLE: dict[type[nn.Module], str] = {
    ConvNeXt: "convnext", EfficientNet: "efficientnet", DenseNet: "densenet", MobileNetV3: "mobilenetv3",
}
#: Families that accept ``attention_stages="all"`` (ResNets through ``block_args``).
STAGE_ATTENTION_FAMILIES: tuple[str, ...] = ("resnet", *_WRAPPABLE.values())


class UnknownAttentionError(ValueError):
    """An attention kind or placement outside the allowed values."""


def check_attention(attention: str, stages: str = "last") -> None:
    """Raise :class:`UnknownAttentionError` unless ``attention`` and ``stages`` are allowed values."""
    if attention not in ATTENTIONS:
        raise UnknownAttentionError(f"attention should be one of {list(ATTENTIONS)}, got {attention!r}")
    if stages not in ATTENTION_STAGES:
        raise UnknownAttentionError(f"attention_stages should be one of {list(ATTENTION_STAGES)}, got {stages!r}")


def create_attention(attention: str, channels: int) -> nn.Module:
    """An attention module for ``channels`` channels: (N, C, H, W) → (N, C, H, W).

    Args:
        attention: one of :data:`ATTENTIONS` (``"none"`` gives ``nn.Identity``).
        channels: C.

    Raises:
        UnknownAttentionError: ``attention`` is not allowed.
    """
    check_attention(attention)
    return nn.Identity() if attention == "none" else get_attn(attention)(channels)


class StageAttention(nn.Module):
    """A backbone stage followed by an attention module: ``attn(stage(x))``.

    Args:
        stage: the stage module, unchanged (its parameters move under ``stage.``).
        attn: the attention module for the stage's output channels.
    """

    def __init__(self, stage: nn.Module, attn: nn.Module):
        super().__init__()
        self.stage = stage
        self.attn = attn

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.stage(x))


def stage_attention_family(backbone: nn.Module) -> str:
    """The family name under which ``backbone`` takes attention after every stage.

    Raises:
        NotImplementedError: the family has no stage attention here (names it and the supported ones),
            e.g. a VisionTransformer, whose stages return token sequences.
    """
    family = type(backbone).__name__
    if isinstance(backbone, ResNet):
        family = "resnet"
    for cls, name in _WRAPPABLE.items():
        if isinstance(backbone, cls):
            family = name
    if family not in STAGE_ATTENTION_FAMILIES:
        raise NotImplementedError(
            f"attention_stages='all' is not supported for the {family} family; it is for "
            f"{list(STAGE_ATTENTION_FAMILIES)} (use attention_stages='last' for the final feature map only)")
    return family


def add_stage_attention(backbone: nn.Module, attention: str) -> list[str]:
    """Wrap every ``feature_info`` stage but the last (whose output the encoder's own module attends).

    Stem entries (reduction 2) are left alone: a stage here is a block group at
    reduction 4 or more. ResNets get their attention at construction instead
    (``block_args``), so they are left unchanged here.

    Args:
        backbone: a timm model (modified in place).
        attention: ``"eca"`` or ``"cbam"`` (``"none"`` does nothing).

    Returns:
        The dotted names of the wrapped stages.

    Raises:
        NotImplementedError: see :func:`stage_attention_family`.
    """
    check_attention(attention)
    family = stage_attention_family(backbone)
    if attention == "none" or family == "resnet":
        return []
    wrapped = []
    for info in backbone.feature_info[:-1]:
        if info["reduction"] < 4:
            continue
        name = info["module"]
        backbone.set_submodule(name, StageAttention(backbone.get_submodule(name),
                                                    create_attention(attention, info["num_chs"])))
        wrapped.append(name)
    return wrapped


def attention_modules(module: nn.Module) -> dict[str, nn.Module]:
    """Every ECA / CBAM module inside ``module``, by dotted name."""
    kinds = tuple(get_attn(a) for a in ATTENTIONS if a != "none")
    return {name: m for name, m in module.named_modules() if isinstance(m, kinds)}


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())

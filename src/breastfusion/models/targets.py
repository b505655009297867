"""Which layer a CAM (Grad-CAM, Score-CAM) reads for each encoder family.

The choice is the usual one: the output of the last convolutional stage, or
the norm layer that closes it, i.e. the last spatial map before pooling.
"""

from __future__ import annotations

from timm.models.convnext import ConvNeXt
from timm.models.densenet import DenseNet
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from torch import nn

from breastfusion.models.encoders import ImageEncoder

__all__ = ["default_target_layer"]


def default_target_layer(encoder: ImageEncoder) -> nn.Module:
    """The module whose (N, C, h, w) output a CAM should explain.

    * ResNet: ``layer4``; ConvNeXt: the last stage (or ``norm_pre`` when it is a real norm);
      EfficientNet: ``bn2`` (after ``conv_head``); DenseNet: ``features.norm5``;
      MobileNetV3: the last block.
    * Token and channels-last models (ViT, Swin) and any other family: the encoder's
      ``feature_map``, where the final map is already laid out as (N, C, h, w).

    Args:
        encoder: an encoder from :func:`~breastfusion.models.encoders.create_encoder`.

    Raises:
        TypeError: ``encoder`` is not an :class:`ImageEncoder`.
    """
    if not isinstance(encoder, ImageEncoder):
        raise TypeError(f"default_target_layer expects an ImageEncoder, got {type(encoder).__name__}")
    b = encoder.backbone
    if isinstance(b, ResNet):
        return b.layer4
    if isinstance(b, ConvNeXt):
        return b.stages[-1] if isinstance(b.norm_pre, nn.Identity) else b.norm_pre
    if isinstance(b, EfficientNet):
        return b.bn2
    if isinstance(b, DenseNet):
        return b.features.norm5
    if isinstance(b, MobileNetV3):
        return b.blocks[-1]
    return encoder.feature_map

"""Fusion of branch outputs into one logit per lesion."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConcatFusion"]


class ConcatFusion(nn.Module):
    """Intermediate fusion: concatenate masked branch features and their presence flags, then a linear head.

    Features of a missing modality are zeroed, and the presence flags let the
    head shift its bias when a modality is absent.
    """

    def __init__(self, in_features: dict[str, int], dropout: float = 0.2):
        super().__init__()
        self.modalities = tuple(in_features)
        total = sum(in_features.values()) + len(in_features)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(total, 1))

    def forward(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``{modality: (features (B, F_m), present (B,))}`` → logits (B,)."""
        parts = []
        for m in self.modalities:
            feats, present = outputs[m]
            mask = present.to(feats.dtype).unsqueeze(1)
            parts += [feats * mask, mask]
        return self.head(torch.cat(parts, dim=1)).squeeze(1)

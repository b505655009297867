"""Branches: each turns one modality into a feature vector of known size plus a presence mask.

The contract every branch keeps: ``forward(batch) -> (features (B, out_features),
present (B,) bool)``. A subject lacking the modality gets zero features and
``present = False``; fusion only ever sees that pair.
"""

from __future__ import annotations

import torch
from torch import nn

from breastfusion.models.encoders import ImageEncoder

__all__ = ["ImageBranch", "ClinicalBranch"]


class ImageBranch(nn.Module):
    """One encoder shared across the views of a modality, pooled over the present views.

    Batch keys read: ``{modality}`` (B, V, C, H, W) float and ``{modality}_views``
    (B, V) bool (which view slots hold an image).

    Args:
        modality: the batch key.
        encoder: the shared image encoder.
        pooling: ``"mean"`` over present views, or ``"attention"``: gated attention
            pooling (Ilse et al. 2018, attention-based deep multiple-instance learning),
            a learned weight per view, softmax over the present ones.
    """

    def __init__(self, modality: str, encoder: ImageEncoder, pooling: str = "mean", hidden: int = 64):
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"view pooling should be 'mean' or 'attention', got {pooling!r}")
        self.modality = modality
        self.encoder = encoder
        self.out_features = encoder.num_features
        self.pooling = pooling
        if pooling == "attention":
            f = encoder.num_features
            self.attn_v = nn.Sequential(nn.Linear(f, hidden), nn.Tanh())
            self.attn_u = nn.Sequential(nn.Linear(f, hidden), nn.Sigmoid())
            self.attn_w = nn.Linear(hidden, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch[self.modality]  # (B, V, C, H, W)
        views = batch[f"{self.modality}_views"]  # (B, V)
        b, v = views.shape
        feats = torch.zeros(b, v, self.out_features, device=images.device, dtype=images.dtype)
        flat = views.reshape(-1)
        if flat.any():
            encoded = self.encoder(images.reshape(b * v, *images.shape[2:])[flat])
            feats = feats.reshape(b * v, -1).index_put((flat.nonzero().squeeze(1),), encoded.to(feats.dtype))
            feats = feats.reshape(b, v, -1)
        if self.pooling == "attention":
            scores = self.attn_w(self.attn_v(feats) * self.attn_u(feats)).squeeze(-1)  # (B, V)
            weights = torch.softmax(scores.masked_fill(~views, float("-inf")), dim=1).nan_to_num(0.0)
            return (weights.unsqueeze(-1) * feats).sum(1), views.any(dim=1)
        weights = views.to(feats.dtype).unsqueeze(-1)
        pooled = (feats * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, F)
        return pooled, views.any(dim=1)


class ClinicalBranch(nn.Module):
    """An MLP over the in-fold-preprocessed clinical features.

    Batch keys read: ``clinical`` (B, F) float and ``clinical_present`` (B,) bool.
    """

    def __init__(self, in_features: int, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out_features = hidden

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        present = batch["clinical_present"]
        feats = self.net(batch["clinical"]) * present.unsqueeze(1).to(batch["clinical"].dtype)
        return feats, present

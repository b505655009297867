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
        mask_loss: weight of the auxiliary lesion-mask loss (0: none). When > 0 the branch has a
            ``mask_head``, a 1 x 1 convolution on the encoder's final feature map that predicts which cells
            hold the lesion; training adds that weight times its loss against the training images' masks
            (:meth:`forward_with_mask_logits`). Prediction never uses it.

    Attributes:
        mask_head: the 1 x 1 convolution (``None`` without mask supervision).
    """

    def __init__(self, modality: str, encoder: ImageEncoder, pooling: str = "mean", hidden: int = 64, *,
                 mask_loss: float = 0.0):
        super().__init__()
        if pooling not in ("mean", "attention"):
            raise ValueError(f"view pooling should be 'mean' or 'attention', got {pooling!r}")
        if mask_loss < 0:
            raise ValueError(f"mask_loss should be >= 0, got {mask_loss!r}")
        self.modality = modality
        self.encoder = encoder
        self.out_features = encoder.num_features
        self.pooling = pooling
        self.mask_loss = float(mask_loss)
        self.mask_head = nn.Conv2d(encoder.map_features, 1, kernel_size=1) if mask_loss > 0 else None
        if pooling == "attention":
            f = encoder.num_features
            self.attn_v = nn.Sequential(nn.Linear(f, hidden), nn.Tanh())
            self.attn_u = nn.Sequential(nn.Linear(f, hidden), nn.Sigmoid())
            self.attn_w = nn.Linear(hidden, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch → (pooled features (B, out_features), present (B,) bool)."""
        return self._forward(batch, with_mask_logits=False)[:2]

    def forward_with_mask_logits(self, batch: dict[str, torch.Tensor]
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`, plus the mask head's logits (B, V, h, w) on the final feature map (zeros in empty view
        slots); ``None`` when the branch has no mask head."""
        return self._forward(batch, with_mask_logits=self.mask_head is not None)

    def _forward(self, batch: dict[str, torch.Tensor], *, with_mask_logits: bool):
        images = batch[self.modality]  # (B, V, C, H, W)
        views = batch[f"{self.modality}_views"]  # (B, V)
        b, v = views.shape
        feats = torch.zeros(b, v, self.out_features, device=images.device, dtype=images.dtype)
        mask_logits = None
        flat = views.reshape(-1)
        if flat.any():
            where = (flat.nonzero().squeeze(1),)
            encoded, fmap = self.encoder.forward_with_map(images.reshape(b * v, *images.shape[2:])[flat])
            feats = feats.reshape(b * v, -1).index_put(where, encoded.to(feats.dtype))
            feats = feats.reshape(b, v, -1)
            if with_mask_logits:
                cells = self.mask_head(fmap).squeeze(1)  # (N present, h, w)
                mask_logits = cells.new_zeros(b * v, *cells.shape[1:]).index_put(where, cells)
                mask_logits = mask_logits.reshape(b, v, *cells.shape[1:])
        if self.pooling == "attention":
            scores = self.attn_w(self.attn_v(feats) * self.attn_u(feats)).squeeze(-1)  # (B, V)
            weights = torch.softmax(scores.masked_fill(~views, float("-inf")), dim=1).nan_to_num(0.0)
            return (weights.unsqueeze(-1) * feats).sum(1), views.any(dim=1), mask_logits
        weights = views.to(feats.dtype).unsqueeze(-1)
        pooled = (feats * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, F)
        return pooled, views.any(dim=1), mask_logits


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

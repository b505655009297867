"""Fusion of branch outputs into one malignancy logit per lesion.

Every fusion takes ``{modality: (features (B, F_m), present (B,) bool)}`` and
returns logits (B,). A modality that is absent for a sample never influences
that sample's output (its features are masked out), so the same network
predicts from any subset of its modalities.

* ``concat`` — intermediate fusion: masked features and presence flags concatenated, then a linear head.
* ``gated``  — each modality projected to a common size, weighted by a learned, input-dependent gate
  (softmax over the present modalities); the gates are kept for explanations (``last_gates``).
* ``late``   — one head per modality; the logits are averaged over the present modalities, with learned
  (``late_weights="learned"``) or equal weights.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FUSIONS", "ConcatFusion", "GatedFusion", "LateFusion", "create_fusion"]

FUSIONS = ("concat", "gated", "late")
Outputs = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _masked(feats: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = present.to(feats.dtype).unsqueeze(1)
    return feats * mask, mask


class ConcatFusion(nn.Module):
    """Concatenate masked branch features and their presence flags, then a linear head."""

    def __init__(self, in_features: dict[str, int], dropout: float = 0.2):
        super().__init__()
        self.modalities = tuple(in_features)
        total = sum(in_features.values()) + len(in_features)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(total, 1))

    def representation(self, outputs: Outputs) -> torch.Tensor:
        """The head's input: masked branch features and presence flags, concatenated (B, sum F + M)."""
        parts = []
        for m in self.modalities:
            feats, mask = _masked(*outputs[m])
            parts += [feats, mask]
        return torch.cat(parts, dim=1)

    def forward(self, outputs: Outputs) -> torch.Tensor:
        return self.head(self.representation(outputs)).squeeze(1)


class GatedFusion(nn.Module):
    """Gated attention fusion: ``sum_m g_m(x) * proj_m(h_m)`` with ``g`` a softmax over present modalities.

    Args:
        in_features: feature size per modality.
        dropout: dropout before the head.
        hidden: size of the common projection.
        null_slot: add a learned, always-present "no information" slot to the softmax. A
            modality that tells nothing can then hand its weight to the slot even when it is the
            only one present, and a lesion with no modality gets the slot's output (a trained
            prior) instead of the head's bias, which no training sample reaches. On pure-noise
            ultrasound it lowered the noise's Shapley share from 1.9% to 1.2% on average
            (bench/explain_noise_share.py, 600 training subjects, before channels-last training); off by default.

    Attributes:
        last_gates: (B, M) gate weights of the last forward pass, in ``modalities`` order
            (0 for absent modalities; with the null slot they sum to 1 minus its weight); kept
            for explanations.
    """

    def __init__(self, in_features: dict[str, int], dropout: float = 0.2, hidden: int = 64, null_slot: bool = False):
        super().__init__()
        self.modalities = tuple(in_features)
        self.project = nn.ModuleDict({m: nn.Sequential(nn.Linear(f, hidden), nn.ReLU()) for m, f in in_features.items()})
        self.score = nn.ModuleDict({m: nn.Linear(hidden, 1) for m in in_features})
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.null = nn.Parameter(torch.zeros(hidden)) if null_slot else None
        self.null_score = nn.Parameter(torch.zeros(())) if null_slot else None
        self.last_gates: torch.Tensor | None = None

    def representation(self, outputs: Outputs) -> torch.Tensor:
        """The head's input: the gate-weighted sum of the projected branch features (B, hidden)."""
        projected, scores, masks = [], [], []
        for m in self.modalities:
            feats, present = outputs[m]
            h = self.project[m](feats)
            projected.append(h)
            scores.append(self.score[m](h).squeeze(1))
            masks.append(present)
        h = torch.stack(projected, dim=1)  # (B, M, H)
        present = torch.stack(masks, dim=1)  # (B, M)
        scores = torch.stack(scores, dim=1).masked_fill(~present, float("-inf"))
        if self.null is not None:  # the slot is one more, always present, input-independent candidate
            b = h.shape[0]
            h = torch.cat([h, self.null.to(h.dtype).expand(b, 1, -1)], dim=1)
            scores = torch.cat([scores, self.null_score.to(scores.dtype).expand(b, 1)], dim=1)
        gates = torch.softmax(scores, dim=1).nan_to_num(0.0)  # a sample with no modality gets all-zero gates
        self.last_gates = gates[:, :len(self.modalities)].detach()
        return (gates.unsqueeze(-1) * h).sum(dim=1)

    def forward(self, outputs: Outputs) -> torch.Tensor:
        return self.head(self.representation(outputs)).squeeze(1)


class LateFusion(nn.Module):
    """Late fusion: a logistic head per modality, logits averaged over the present modalities.

    Args:
        in_features: feature size per modality.
        dropout: dropout before each head.
        weights: ``"learned"`` (softmax of learned scalars, renormalised over present
            modalities) or ``"mean"`` (equal weights).
    """

    def __init__(self, in_features: dict[str, int], dropout: float = 0.2, weights: str = "learned"):
        super().__init__()
        if weights not in ("learned", "mean"):
            raise ValueError(f"late fusion weights should be 'learned' or 'mean', got {weights!r}")
        self.modalities = tuple(in_features)
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.Dropout(dropout), nn.Linear(f, 1))
                                    for m, f in in_features.items()})
        self.log_weights = nn.Parameter(torch.zeros(len(in_features)), requires_grad=weights == "learned")

    def modality_logits(self, outputs: Outputs) -> torch.Tensor:
        """Per-modality logits (B, M), in ``modalities`` order."""
        return torch.stack([self.heads[m](outputs[m][0]).squeeze(1) for m in self.modalities], dim=1)

    def representation(self, outputs: Outputs) -> torch.Tensor:
        """Per-modality logits of the present modalities (0 where absent) and the presence flags (B, 2M)."""
        present = torch.stack([outputs[m][1] for m in self.modalities], dim=1).to(torch.float32)
        return torch.cat([self.modality_logits(outputs) * present, present], dim=1)

    def forward(self, outputs: Outputs) -> torch.Tensor:
        logits = self.modality_logits(outputs)
        present = torch.stack([outputs[m][1] for m in self.modalities], dim=1)
        w = torch.softmax(self.log_weights, dim=0).expand_as(logits) * present.to(logits.dtype)
        w = w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return (w * logits).sum(dim=1)


def create_fusion(name: str, in_features: dict[str, int], *, dropout: float = 0.2, hidden: int = 64,
                  late_weights: str = "learned", null_slot: bool = False) -> nn.Module:
    """Build a fusion module by name (one of ``FUSIONS``).

    Raises:
        ValueError: unknown name (the message lists the options).
    """
    if name == "concat":
        return ConcatFusion(in_features, dropout)
    if name == "gated":
        return GatedFusion(in_features, dropout, hidden, null_slot=null_slot)
    if name == "late":
        return LateFusion(in_features, dropout, late_weights)
    raise ValueError(f"fusion should be one of {list(FUSIONS)}, got {name!r}")

"""The multimodal network: a branch per modality, then fusion."""

from __future__ import annotations

import torch
from torch import nn

from breastfusion.models.branches import ClinicalBranch, ImageBranch
from breastfusion.models.encoders import create_encoder
from breastfusion.models.fusion import create_fusion

__all__ = ["MultimodalNet", "build_network"]


class MultimodalNet(nn.Module):
    """Branches keyed by modality, fused into one malignancy logit per lesion."""

    def __init__(self, branches: dict[str, nn.Module], fusion: str = "concat", **fusion_kwargs):
        super().__init__()
        if not branches:
            raise ValueError("a network needs at least one modality branch")
        self.branches = nn.ModuleDict(branches)
        self.fusion = create_fusion(fusion, {m: b.out_features for m, b in branches.items()}, **fusion_kwargs)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.branches)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A batch dict (see the branches for keys) → logits (B,)."""
        return self.fusion({m: branch(batch) for m, branch in self.branches.items()})

    def features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Deep features for stage-2 learners: ``fused`` (the fusion head's input) and, per branch, its
        features zeroed where the modality is absent, followed by its presence flag (B, F + 1)."""
        outputs = {m: branch(batch) for m, branch in self.branches.items()}
        out = {"fused": self.fusion.representation(outputs)}
        for m, (feats, present) in outputs.items():
            flag = present.to(feats.dtype).unsqueeze(1)
            out[m] = torch.cat([feats * flag, flag], dim=1)
        return out


def build_network(modalities: tuple[str, ...], model_config, n_clinical_features: int) -> MultimodalNet:
    """Build the network for a modality subset from a :class:`~breastfusion.config.ModelConfig`."""
    branches: dict[str, nn.Module] = {}
    for modality in modalities:
        if modality == "clinical":
            cfg = model_config.clinical
            branches[modality] = ClinicalBranch(n_clinical_features, hidden=cfg.hidden, dropout=cfg.dropout)
        else:
            cfg = getattr(model_config, modality)
            encoder = create_encoder(cfg.encoder, in_chans=1, attention=cfg.attention,
                                     attention_stages=cfg.attention_stages, weights=cfg.weights,
                                     **cfg.encoder_kwargs)
            branches[modality] = ImageBranch(modality, encoder, pooling=cfg.view_pooling)
    return MultimodalNet(branches, model_config.fusion, dropout=model_config.dropout,
                         hidden=model_config.fusion_hidden, late_weights=model_config.late_weights,
                         null_slot=model_config.fusion_null_slot)

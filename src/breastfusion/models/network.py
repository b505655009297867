"""The multimodal network: a branch per modality, then fusion."""

from __future__ import annotations

import torch
from torch import nn

from breastfusion.models.branches import ClinicalBranch, ImageBranch
from breastfusion.models.encoders import create_encoder
from breastfusion.models.fusion import create_fusion

__all__ = ["MultimodalNet", "SeedEnsemble", "SingleNetworkRequired", "build_network", "member_seed",
           "network_members", "require_single_network", "MEMBER_SEED_STRIDE"]

#: Member j of a seed ensemble trains with the fold seed + j x this stride (member 0 is the single network).
MEMBER_SEED_STRIDE = 10_000_000


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

    def forward_with_mask_logits(self, batch: dict[str, torch.Tensor]
                                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward`, plus each mask-supervised image branch's mask logits ``{modality: (B, V, h, w)}``
        (:meth:`~breastfusion.models.branches.ImageBranch.forward_with_mask_logits`), from one pass."""
        outputs, mask_logits = {}, {}
        for m, branch in self.branches.items():
            if getattr(branch, "mask_head", None) is None:
                outputs[m] = branch(batch)
                continue
            feats, present, logits = branch.forward_with_mask_logits(batch)
            outputs[m] = (feats, present)
            if logits is not None:
                mask_logits[m] = logits
        return self.fusion(outputs), mask_logits

    def features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Deep features for stage-2 learners: ``fused`` (the fusion head's input) and, per branch, its
        features zeroed where the modality is absent, followed by its presence flag (B, F + 1)."""
        outputs = {m: branch(batch) for m, branch in self.branches.items()}
        out = {"fused": self.fusion.representation(outputs)}
        for m, (feats, present) in outputs.items():
            flag = present.to(feats.dtype).unsqueeze(1)
            out[m] = torch.cat([feats * flag, flag], dim=1)
        return out


class SeedEnsemble(nn.Module):
    """Networks of one architecture trained from different seeds; its logit is the mean of theirs.

    Averaging the logits of a few independently seeded networks lowers the variance a small medical dataset
    gives a single training run (``training.seeds``). Member 0 is the network ``training.seeds: 1`` trains, so
    an ensemble only ever adds members to it. Its weights are the members' (``members.{j}.…`` keys).
    """

    def __init__(self, members: list[MultimodalNet]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a seed ensemble needs at least two members, got {len(members)}")
        if len({m.modalities for m in members}) != 1:
            raise ValueError(f"seed ensemble members read different modalities: {[m.modalities for m in members]}")
        self.members = nn.ModuleList(members)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.members[0].modalities

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """A batch dict → the members' mean logit (B,)."""
        return torch.stack([member(batch) for member in self.members]).mean(0)

    def features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Refused: stage-2 learners read one network's deep features (:func:`require_single_network`)."""
        raise SingleNetworkRequired(_ensemble_message(self, "deep features (stage 2)"))


class SingleNetworkRequired(ValueError):
    """A step that reads one network's internals (its features, its encoder's activations) met a seed ensemble."""


def require_single_network(net: nn.Module, what: str) -> MultimodalNet:
    """``net`` itself when it is one :class:`MultimodalNet`; a clear error for a :class:`SeedEnsemble`.

    Stage-2 learners read one network's deep features; an ensemble of K networks has K feature sets of
    unrelated coordinates (explanations, which combine per-member outputs, use :func:`network_members`).
    """
    if isinstance(net, SeedEnsemble):
        raise SingleNetworkRequired(_ensemble_message(net, what))
    return net


def network_members(net: nn.Module) -> list[MultimodalNet]:
    """The single networks whose mean logit ``net`` predicts: a :class:`SeedEnsemble`'s members, or ``[net]``.

    Explanations of a seed ensemble are read member by member and combined on the logit scale (Shapley values,
    clinical importance) or averaged (heatmaps), as a bundle's are over its fold networks."""
    return list(net.members) if isinstance(net, SeedEnsemble) else [net]


def _ensemble_message(net: SeedEnsemble, what: str) -> str:
    k = len(net.members)
    return (f"{what} needs a single network, but this is a seed ensemble of {k} networks (training.seeds: {k}); "
            "train with training.seeds: 1 for it")


def member_seed(seed: int, member: int) -> int:
    """The training seed of seed-ensemble member ``member`` (0: ``seed`` itself)."""
    return seed + MEMBER_SEED_STRIDE * member


def build_network(modalities: tuple[str, ...], model_config, n_clinical_features: int, *,
                  seeds: int = 1) -> MultimodalNet | SeedEnsemble:
    """Build the network for a modality subset from a :class:`~breastfusion.config.ModelConfig`; with
    ``seeds > 1`` a :class:`SeedEnsemble` of that many (untrained, differently initialised) copies."""
    if seeds > 1:
        return SeedEnsemble([build_network(modalities, model_config, n_clinical_features) for _ in range(seeds)])
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
            branches[modality] = ImageBranch(modality, encoder, pooling=cfg.view_pooling, mask_loss=cfg.mask_loss)
    return MultimodalNet(branches, model_config.fusion, dropout=model_config.dropout,
                         hidden=model_config.fusion_hidden, late_weights=model_config.late_weights,
                         null_slot=model_config.fusion_null_slot)

"""Exact Shapley values over modalities, through the network's own missing-modality mechanism.

The players are the network's modalities. A coalition S is evaluated by
marking every modality outside S absent in the batch (``{modality}_views``
all False, ``clinical_present`` False), exactly as a subject lacking those
modalities is predicted, so no modality is imputed or replaced by noise. With
at most three modalities the 2^M coalitions are all evaluated: the values are
exact, and they sum to f(all) − f(none) (efficiency) for every lesion.

The empty coalition is the one state the network never sees: modality dropout
always leaves a sample one modality, and no subject lacks them all. Its forward
pass on an all-masked batch is an intercept no training sample pins down (in
``concat`` and ``gated`` the head's bias), and an error δ in f(none) moves every
player's value by −δ/M (tested): a modality that carries nothing would get
|δ|/M. So ``breastfusion explain`` values f(none) (the ``empty`` argument) as
what a network trained with the run's loss predicts for a lesion it knows
nothing about (:func:`no_information_prob`: the training prevalence, or 0.5
under balanced sampling or class weights); without ``empty``, the network's own
all-masked output is used.

The other coalitions are only meaningful for a network that met missing
modalities in training (``training.modality_dropout`` > 0): otherwise a
single-modality prediction is an extrapolation. On synthetic cohorts whose
ultrasound is pure pixel noise (bench/explain_noise_share.py: 600 training
subjects, 40 epochs, shares on 200 held-out lesions, 3 cohorts x 2 seeds) the
noise got 28.9% of the output change without modality dropout and 1.7%
(0.9–2.1% on one thread, 1.9–5.4% on two) with 0.5 in gated fusion, against
27.1% for the ultrasound as rendered; earlier runs (before channels-last
training) gave 1.2% with the null slot and, in concat fusion, 5.2% (2.4–12.0%)
against 31.8%.
What remains is the network's own response to the noise when the noise is all
it is shown: the values report it faithfully, only a network that ignores the
noise removes it.

Shares are reported as percentages of the absolute output change:
``|φ_m| / Σ_j |φ_j|`` per lesion, and over a cohort ``mean|φ_m| / Σ_j mean|φ_j|``
(a share of the average contribution, stable where single lesions barely move).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import torch

from breastfusion.data.manifest import IMAGE_MODALITIES
from breastfusion.data.tensors import modality_present
from breastfusion.models.network import MultimodalNet, SeedEnsemble, network_members

__all__ = ["SCALES", "mask_modalities", "no_information_prob", "coalition_values", "modality_shapley",
           "shapley_shares", "gate_weights"]

#: Output scales the game can be played on.
SCALES = ("prob", "logit")


def mask_modalities(batch: dict[str, torch.Tensor], absent: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A copy of ``batch`` in which the modalities ``absent`` are missing for every lesion."""
    out = dict(batch)
    for modality in absent:
        key = f"{modality}_views" if modality in IMAGE_MODALITIES else "clinical_present"
        if key in out:
            out[key] = torch.zeros_like(out[key])
    return out


def no_information_prob(labels: np.ndarray, *, sampler: str = "shuffle", class_weights: bool = False) -> float:
    """P(malignant) that the training loss makes a network predict for a lesion it knows nothing about.

    The constant p minimising the expected training loss ``−w·π·log p − (1 − π)·log(1 − p)``, with
    π the malignant share of the samples the loss sees (the labels' prevalence under ``shuffle``,
    0.5 under ``balanced`` sampling) and w the malignant class weight (benign / malignant counts
    with ``class_weights``, else 1): ``p = w·π / (w·π + 1 − π)``. It is the value of the empty
    coalition, as :mod:`breastfusion.training.fit` weighs the loss.

    Args:
        labels: 0/1 labels of the lesions the network was trained on.
        sampler: ``"shuffle"`` or ``"balanced"`` (``training.sampler``).
        class_weights: ``training.class_weights``.

    Raises:
        ValueError: no labels, labels other than 0/1, or an unknown sampler.
    """
    y = np.asarray(labels, dtype=float).ravel()
    if y.size == 0 or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels should be a non-empty array of 0/1, got {y.size} values")
    if sampler not in ("shuffle", "balanced"):
        raise ValueError(f"sampler should be 'shuffle' or 'balanced', got {sampler!r}")
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    share = 0.5 if sampler == "balanced" else n_pos / y.size
    weight = n_neg / max(n_pos, 1.0) if class_weights else 1.0
    return weight * share / (weight * share + 1.0 - share)


@torch.no_grad()
def coalition_values(net: MultimodalNet | SeedEnsemble, batch: dict[str, torch.Tensor], *, scale: str = "prob",
                     reuse_branches: bool = True, empty: float | None = None) -> dict[frozenset[str], torch.Tensor]:
    """The network's output for every coalition of its modalities.

    Args:
        net: a network in eval mode; for a seed ensemble, each coalition's output is its members' mean
            logit (the ensemble's own prediction with those modalities), so the values stay exact.
        batch: prepared (normalised) batch of B lesions.
        scale: ``"prob"`` (P(malignant)) or ``"logit"``.
        reuse_branches: encode each modality once and hand fusion, for a modality
            outside the coalition, what its branch returns for a missing input
            (zero features, ``present`` False: the branch contract). ``False``
            runs the whole network on a masked batch per coalition; both give
            the same numbers (tested), the first 2^(M-1) times fewer encoder passes.
        empty: P(malignant) of the empty coalition (see :func:`no_information_prob`), also given to
            every coalition holding none of the modalities a lesion has; ``None``: the network's
            output with every modality masked.

    Returns:
        ``{frozenset of present modalities: float64 (B,)}`` for all 2^M coalitions.

    Raises:
        ValueError: unknown scale, or ``empty`` outside (0, 1).
    """
    if scale not in SCALES:
        raise ValueError(f"scale should be one of {list(SCALES)}, got {scale!r}")
    if empty is not None and not 0.0 < empty < 1.0:
        raise ValueError(f"empty should be a probability in (0, 1), got {empty!r}")
    players = net.modalities
    present = {m: modality_present(batch, m) for m in players}
    # a seed ensemble's output is its members' mean logit, coalition by coalition
    member_logits = [_coalition_logits(member, batch, reuse_branches) for member in network_members(net)]
    values = {}
    for coalition in member_logits[0]:
        logits = torch.stack([logits[coalition] for logits in member_logits]).mean(0).double()
        values[coalition] = torch.sigmoid(logits) if scale == "prob" else logits
    if empty is not None:
        # a coalition holding none of the modalities a lesion has is the empty coalition for that lesion
        value = empty if scale == "prob" else math.log(empty / (1.0 - empty))
        for coalition, v in values.items():
            nothing = torch.ones_like(v, dtype=torch.bool)
            for m in coalition:
                nothing &= ~present[m].to(v.device)
            values[coalition] = torch.where(nothing, torch.full_like(v, value), v)
    return values


def _coalition_logits(net: MultimodalNet, batch: dict[str, torch.Tensor],
                      reuse_branches: bool) -> dict[frozenset[str], torch.Tensor]:
    """One network's logits for every coalition of its modalities (see :func:`coalition_values`)."""
    players = net.modalities
    outputs = {m: branch(batch) for m, branch in net.branches.items()} if reuse_branches else None
    logits = {}
    for r in range(len(players) + 1):
        for coalition in itertools.combinations(players, r):
            absent = tuple(m for m in players if m not in coalition)
            if outputs is None:
                logits[frozenset(coalition)] = net(mask_modalities(batch, absent))
            else:
                logits[frozenset(coalition)] = net.fusion(
                    {m: (torch.zeros_like(outputs[m][0]), torch.zeros_like(outputs[m][1])) if m in absent
                     else outputs[m] for m in players})
    return logits


def modality_shapley(net: MultimodalNet | SeedEnsemble, batch: dict[str, torch.Tensor], *,
                     scale: str = "prob", empty: float | None = None) -> pd.DataFrame:
    """Exact Shapley value of each modality for each lesion of ``batch``.

    Args:
        net: a network in eval mode.
        batch: prepared batch of B lesions.
        scale: ``"prob"`` or ``"logit"``.
        empty: P(malignant) of the empty coalition (:func:`no_information_prob` of the
            network's training labels); ``None``: the network's all-masked output.

    Returns:
        One row per lesion: ``phi_{modality}`` per modality, ``full`` (all
        modalities, as the lesion has them), ``empty`` (none). For every row,
        the ``phi_*`` sum to ``full - empty``. A modality the lesion lacks gets 0.
    """
    values = coalition_values(net, batch, scale=scale, empty=empty)
    players = net.modalities
    m = len(players)
    out = {}
    for player in players:
        others = [p for p in players if p != player]
        phi = torch.zeros_like(values[frozenset()])
        for r in range(m):
            weight = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
            for coalition in itertools.combinations(others, r):
                s = frozenset(coalition)
                phi += weight * (values[s | {player}] - values[s])
        out[f"phi_{player}"] = phi.numpy()
    out["full"] = values[frozenset(players)].numpy()
    out["empty"] = values[frozenset()].numpy()
    return pd.DataFrame(out)


def shapley_shares(phi: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Percent shares of the absolute output change, per lesion and over all lesions.

    Args:
        phi: the output of :func:`modality_shapley` (or its rows for many lesions).

    Returns:
        (per-lesion shares, columns ``share_{modality}`` in percent, NaN where
        nothing moved; cohort shares ``{modality: percent}``).
    """
    columns = [c for c in phi.columns if c.startswith("phi_")]
    names = [c.removeprefix("phi_") for c in columns]
    magnitude = phi[columns].abs().to_numpy()
    total = magnitude.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_lesion = np.where(total > 0, 100 * magnitude / total, np.nan)
    mean = magnitude.mean(axis=0)
    cohort = {n: float(100 * v / mean.sum()) if mean.sum() > 0 else float("nan") for n, v in zip(names, mean)}
    return pd.DataFrame(per_lesion, columns=[f"share_{n}" for n in names], index=phi.index), cohort


@torch.no_grad()
def gate_weights(net: MultimodalNet | SeedEnsemble, batch: dict[str, torch.Tensor]) -> pd.DataFrame | None:
    """Per-lesion modality weights of the fusion, or ``None`` when it has none (concatenation).

    * gated fusion: the input-dependent gates of the forward pass (``last_gates``, a softmax
      over the present modalities);
    * late fusion: its learned modality weights, renormalised over each lesion's present modalities;
    * a seed ensemble: its members' weights averaged.

    Returns:
        ``gate_{modality}`` per lesion, or ``None``.
    """
    frames = [_member_gate_weights(member, batch) for member in network_members(net)]
    if any(frame is None for frame in frames):
        return None
    return sum(frames[1:], frames[0]) / len(frames)


def _member_gate_weights(net: MultimodalNet, batch: dict[str, torch.Tensor]) -> pd.DataFrame | None:
    fusion = net.fusion
    modalities = tuple(getattr(fusion, "modalities", net.modalities))
    outputs = {m: branch(batch) for m, branch in net.branches.items()}
    if hasattr(fusion, "last_gates"):
        fusion(outputs)
        weights = fusion.last_gates
    elif hasattr(fusion, "log_weights"):
        present = torch.stack([outputs[m][1] for m in modalities], dim=1).double()
        weights = torch.softmax(fusion.log_weights.double(), dim=0) * present
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    else:
        return None
    return pd.DataFrame({f"gate_{m}": weights[:, i].double().cpu().numpy() for i, m in enumerate(modalities)})

"""Clinical variable importance: permutation importance grouped by subject, out of fold.

For each clinical variable, its raw values are shuffled among the held-out
subjects of each fold (a subject's value moves to another subject, so all of a
subject's lesions change together and a one-hot group moves as one variable),
the fold's own preprocessor turns the shuffled table into features, and the
fold's network predicts again. The importance is the drop in subject-level AUC
over the pooled out-of-fold predictions, averaged over repeats.

Only the clinical branch sees the change, so the image branches are encoded
once per fold and the shuffled repeats cost a small MLP each.

(Stage 2, the stacking ensemble, will get the same per feature *group*; it does
not exist yet.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from breastfusion.evaluation.metrics import subject_level
from breastfusion.data.transforms import prepare_batch
from breastfusion.experiment.run_artifacts import RunArtifacts
from breastfusion.models.network import network_members

__all__ = ["clinical_permutation_importance"]


@torch.no_grad()
def _fold_inputs(art: RunArtifacts, variant: str, fold: int):
    """The fold's network, its held-out batch and, per single network (a seed ensemble's members), the image
    branches' outputs, which no clinical shuffle changes."""
    net = art.network(variant, fold)
    data = art.dataset(variant, fold)
    batch = prepare_batch(data.tensors)
    fixed = [(member, {m: branch(batch) for m, branch in member.branches.items() if m != "clinical"})
             for member in network_members(net)]
    return net, batch, fixed


@torch.no_grad()
def _predict(fixed, clinical: np.ndarray, present: np.ndarray) -> np.ndarray:
    """P(malignant) from new clinical features: the members' mean logit, as the network predicts."""
    batch = {"clinical": torch.tensor(np.asarray(clinical)), "clinical_present": torch.tensor(np.asarray(present))}
    logits = []
    for member, outputs in fixed:
        outputs = dict(outputs, clinical=member.branches["clinical"](batch))
        logits.append(member.fusion({m: outputs[m] for m in member.modalities}))
    return torch.sigmoid(torch.stack(logits).mean(0)).double().numpy()


@torch.no_grad()
def clinical_permutation_importance(art: RunArtifacts, variant: str, *, n_repeats: int = 10,
                                    seed: int = 0) -> pd.DataFrame:
    """Drop in out-of-fold subject-level AUC when each clinical variable is shuffled among subjects.

    Args:
        art: a reloaded run.
        variant: a variant that reads the clinical modality.
        n_repeats: shuffles per variable.
        seed: seed of the shuffles.

    Returns:
        One row per clinical variable, most important first: ``variable``,
        ``importance`` (mean AUC drop), ``importance_sd``, ``auc`` (unshuffled).

    Raises:
        ValueError: the variant has no clinical branch.
    """
    if "clinical" not in art.modalities(variant):
        raise ValueError(f"variant {variant!r} reads {list(art.modalities(variant))}; permutation importance "
                         "of clinical variables needs one with the clinical modality")
    rng = np.random.default_rng(seed)
    table = art.cohort.clinical.set_index("subject_id")
    variables = list(table.columns)
    lesions = art.lesions
    folds = []
    for k in range(art.n_folds):
        net, batch, fixed = _fold_inputs(art, variant, k)
        base = _predict(fixed, batch["clinical"].numpy(), batch["clinical_present"].numpy())
        ref = torch.sigmoid(net(batch)).double().numpy()
        if not np.allclose(base, ref, atol=1e-6):  # the shortcut must be the network's own forward pass
            raise RuntimeError("clinical permutation: the branch-wise forward pass differs from the network's")
        test = lesions.iloc[art.folds[k][1]]
        folds.append((k, net, fixed, test, base))

    def auc(probs: list[np.ndarray]) -> float:
        frame = pd.concat([t.assign(prob=p) for (_, _, _, t, _), p in zip(folds, probs)])
        subjects = subject_level(frame[["subject_id", "y", "prob"]])
        return float(roc_auc_score(subjects["y"], subjects["prob"]))

    base_auc = auc([f[4] for f in folds])
    rows = []
    for variable in variables:
        drops = []
        for _ in range(n_repeats):
            probs = []
            for k, net, fixed, test, _ in folds:
                present = test["subject_id"].isin(table.index).to_numpy()
                subjects = test.loc[present, "subject_id"].drop_duplicates().to_numpy()
                rows_k = table.loc[subjects].copy()
                rows_k[variable] = rows_k[variable].to_numpy()[rng.permutation(len(subjects))]
                pre = art.clinical_preprocessor(k)
                features = np.zeros((len(test), pre.n_features_), dtype=np.float32)
                if present.any():
                    features[present] = pre.transform(rows_k.loc[test.loc[present, "subject_id"]].reset_index())
                probs.append(_predict(fixed, features, present))
            drops.append(base_auc - auc(probs))
        rows.append({"variable": variable, "importance": float(np.mean(drops)),
                     "importance_sd": float(np.std(drops, ddof=1)) if n_repeats > 1 else 0.0, "auc": base_auc})
    return pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)

"""Explain a finished run: heatmaps, modality contributions, clinical importance, faithfulness.

Every subject is explained by the fold network that did not see it. The run's
``results.json`` gets an ``explanations`` key and ``report.html`` a gallery;
heatmap overlays and per-lesion tables go to the output folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from breastfusion.data.manifest import IMAGE_MODALITIES
from breastfusion.data.transforms import prepare_batch
from breastfusion.evaluation.compare import load_run_scores
from breastfusion.evaluation.metrics import subject_level
from breastfusion.experiment.run import write_results
from breastfusion.strict_json import write_json
from breastfusion.experiment.run_artifacts import RunArtifacts, load_run
from breastfusion.explain.cams import (CAM_METHODS, EnsembleImageModel, OneImageModel, TargetLayer, compute_cams,
                                       encode_views, find_target_layers, image_model)
from breastfusion.explain.faithfulness import (centre_heatmap, deletion_insertion, energy_in_mask, pointing_game,
                                               pointing_tolerance, random_heatmap)
from breastfusion.explain.gallery import overlay, plot_gallery, save_overlay, select_cases
from breastfusion.explain.importance import clinical_permutation_importance
from breastfusion.explain.shapley import gate_weights, modality_shapley, no_information_prob, shapley_shares
from breastfusion.models.network import network_members

__all__ = ["explain_run", "default_variant", "parse_target_layers"]

_RANDOM_DRAWS = 8  # random heatmaps per image for the baseline


def default_variant(art: RunArtifacts) -> str:
    """The network variant with the most modalities (the first such in the config), preferring one with an image.

    Score-level fusion variants (``model.fusion: score``) are not networks of their own: their image part is
    explained through the image variant, so they are passed over."""
    variants = [v for v in art.config.variants if art.config.variant_model(v).fusion != "score"] \
        or list(art.config.variants)
    return max(variants, key=lambda v: (any(m in IMAGE_MODALITIES for m in art.config.modalities(v)),
                                        len(art.config.modalities(v))))


def check_explainable(art: RunArtifacts, variant: str) -> None:
    """Refuse a score-level fusion variant, naming the variants that can be explained.

    Raises:
        ValueError: ``variant`` averages an image network with a clinical learner; its heatmaps are its image
            network's and its modality split is fixed (equal weights), so explain the network variants instead.
    """
    if art.config.variant_model(variant).fusion == "score":
        others = [v for v in art.config.variants if art.config.variant_model(v).fusion != "score"]
        raise ValueError(f"variant {variant!r} is score-level fusion (the image network's probability averaged "
                         f"with a clinical learner's, equal weights): explain its image network through one of "
                         f"{others}")


def run_subject_scores(art: RunArtifacts, variant: str) -> pd.DataFrame:
    """The run's own subject scores of ``variant``: ``subject_id``, ``y``, ``prob`` (aggregated and recalibrated as
    the run's ``evaluation`` says) and ``threshold`` (the Youden threshold of the fold that held the subject out,
    fitted on that fold's calibration scores), so "misclassified" means what the report's confusion matrix means.
    A run without ``calibration_predictions.csv`` falls back to mean-aggregated lesions and 0.5."""
    if art.layout.calibration.is_file():
        scores = load_run_scores(art.root, variant).scores
        return scores.rename(columns={"youden_threshold": "threshold"})[["subject_id", "y", "prob", "threshold"]]
    return subject_level(art.predictions[art.predictions["variant"] == variant]).assign(threshold=0.5)


def parse_target_layers(spec: str | None) -> dict[str, str]:
    """``"backbone.layer3"`` (every image branch) or ``"ultrasound=final,mammography=backbone.layer3"``."""
    if not spec:
        return {}
    if "=" not in spec:
        return {m: spec for m in IMAGE_MODALITIES}
    out = {}
    for part in spec.split(","):
        modality, _, name = part.partition("=")
        if modality.strip() not in IMAGE_MODALITIES or not name.strip():
            raise ValueError(f"target layer {part!r}: expected MODALITY=LAYER with MODALITY one of "
                             f"{list(IMAGE_MODALITIES)}")
        out[modality.strip()] = name.strip()
    return out


def _contributions(art: RunArtifacts, variant: str, out: Path) -> dict[str, Any]:
    """Exact modality Shapley values for every lesion, each by its held-out fold's network.

    The empty coalition is worth the fold's no-information prediction (its training labels under
    the run's sampler and class weights; see :mod:`breastfusion.explain.shapley`).
    """
    training = art.config.training
    frames, gates, empties = [], [], []
    for k in range(art.n_folds):
        net, data = art.network(variant, k), art.dataset(variant, k)
        empty = no_information_prob(art.lesions["y"].to_numpy()[art.folds[k][0]], sampler=training.sampler,
                                    class_weights=training.class_weights)
        empties.append(empty)
        loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=False)
        parts = []
        for batch in loader:
            batch = prepare_batch(batch)
            parts.append(modality_shapley(net, batch, empty=empty))
            gate = gate_weights(net, batch)
            if gate is not None:
                gates.append(gate)
        test = art.lesions.iloc[art.folds[k][1]]
        frames.append(pd.concat(parts, ignore_index=True).assign(
            fold=k, subject_id=test["subject_id"].to_numpy(), lesion_id=test["lesion_id"].to_numpy(),
            y=test["y"].to_numpy()))
    phi = pd.concat(frames, ignore_index=True)
    shares, cohort = shapley_shares(phi)
    phi = pd.concat([phi, shares], axis=1)
    phi.to_csv(out / "modality_shapley.csv", index=False)
    columns = [c for c in phi.columns if c.startswith("phi_")]
    efficiency = (phi[columns].sum(axis=1) - (phi["full"] - phi["empty"])).abs().max()
    modalities = [c.removeprefix("phi_") for c in columns]
    dropout = float(training.modality_dropout)
    note = None if dropout > 0 or len(modalities) < 2 else (
        "trained without modality dropout: the network never saw a modality missing, so its predictions from "
        "subsets of modalities, and these shares, are extrapolations; retrain with training.modality_dropout > 0")
    return {
        "scale": "prob", "n_lesions": int(len(phi)), "share_percent": cohort,
        "empty_coalition": "no-information prediction of each fold (training prevalence under the run's loss)",
        "empty_by_fold": empties, "modality_dropout": dropout, "note": note,
        "mean_phi": {m: float(phi[f"phi_{m}"].mean()) for m in modalities},
        "mean_abs_phi": {m: float(phi[f"phi_{m}"].abs().mean()) for m in modalities},
        "mean_full": float(phi["full"].mean()), "mean_empty": float(phi["empty"].mean()),
        "efficiency_max_error": float(efficiency),
        "gate_weights": ({c.removeprefix("gate_"): float(v) for c, v in pd.concat(gates).mean().items()}
                         if gates else None),
    }


def _image_to_display(image: torch.Tensor) -> np.ndarray:
    return image.float().div(255.0).numpy()[0]  # (H, W) in [0, 1]: the preprocessed image


def explain_run(
    run_dir: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    method: str = "scorecam",
    out: str | Path | None = None,
    variant: str | None = None,
    target_layers: dict[str, str] | None = None,
    n_cases: int = 4,
    faithfulness_methods: Sequence[str] | None = None,
    importance_repeats: int = 5,
    scorecam_batch: int = 256,
    seed: int = 0,
    update_run: bool = True,
    allow_outside_root: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Explain a run folder and write the explanations.

    Args:
        run_dir: a run folder (``breastfusion demo`` / ``run``).
        subjects: subjects whose images get heatmaps; default: ``n_cases`` most
            confident correct and misclassified subjects each.
        method: the CAM method of the overlays and of the deletion / insertion curves.
        out: folder for overlays and tables (default ``RUN/explain``).
        variant: the variant explained (default: :func:`default_variant`).
        target_layers: ``{image modality: layer name}`` overriding the automatic choice.
        n_cases: cases per gallery side when ``subjects`` is not given.
        faithfulness_methods: CAM methods scored against lesion masks
            (default: every method); only where the cohort has masks.
        importance_repeats: shuffles per clinical variable.
        scorecam_batch: Score-CAM's masked images per forward pass.
        seed: seed of random baselines and shuffles.
        update_run: add ``explanations`` to the run's ``results.json`` and re-render ``report.html``.
        allow_outside_root: passed to :func:`~breastfusion.experiment.run_artifacts.load_run`.
        progress: a rich Progress.

    Returns:
        The ``explanations`` dict (also written to ``OUT/explanations.json``, strict JSON: NaN as null).

    Raises:
        ValueError: unknown method, variant or subject.
        RunFolderError: the run folder cannot be reloaded.
    """
    started = time.perf_counter()
    if method not in CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(CAM_METHODS)}")
    art = load_run(run_dir, allow_outside_root=allow_outside_root)
    variant = variant or default_variant(art)
    check_explainable(art, variant)
    modalities = art.modalities(variant)
    out = Path(out) if out is not None else art.layout.explain
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)

    per_subject = run_subject_scores(art, variant)
    chosen, misclassified = _choose_subjects(art, per_subject, subjects, n_cases)
    result: dict[str, Any] = {"variant": variant, "modalities": list(modalities), "method": method,
                              "folds": art.n_folds, "out_dir": str(out)}
    result.update(_lesion_explanations(art, variant, out, importance_repeats=importance_repeats, seed=seed,
                                       progress=progress))
    heatmaps = _Heatmaps(art, variant, method=method, out=out,
                         faithfulness_methods=_faithfulness_methods(method, faithfulness_methods),
                         target_layers=target_layers or {}, scorecam_batch=scorecam_batch,
                         rng=np.random.default_rng(seed), progress=progress)
    cases = heatmaps.draw(chosen, misclassified, per_subject)
    heatmaps.write_tables()

    result["target_layers"] = {m: layers[0].name for (_, m), layers in heatmaps.layers.items()}
    result["subjects"] = chosen
    result["gallery"] = {"correct": [s for s in chosen if s not in misclassified],
                         "misclassified": [s for s in chosen if s in misclassified]}
    result["faithfulness"] = _summarise_faithfulness(heatmaps.faith_rows, heatmaps.records, heatmaps.curves, method)
    gallery = plot_gallery(cases, out / "gallery.png",
                           title=f"{variant}: {method} heatmaps from the fold network that did not see the subject")
    result["gallery_png"] = str(gallery) if gallery else None
    result["runtime_s"] = round(time.perf_counter() - started, 1)
    write_json(out / "explanations.json", result)
    if update_run:
        _update_run(art, result, gallery)
    return result


def _faithfulness_methods(method: str, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The CAM methods scored against lesion masks: those requested (default: all), always with ``method``."""
    methods = tuple(requested) if requested is not None else tuple(CAM_METHODS)
    return methods if method in methods else (method, *methods)


def _choose_subjects(art: RunArtifacts, per_subject: pd.DataFrame, subjects: Sequence[str] | None,
                     n_cases: int) -> tuple[list[str], set[str]]:
    """The subjects to draw heatmaps for, and which of them the run misclassified.

    Given ``subjects``: those (in order, once each); else the ``n_cases`` most confident correct and
    misclassified subjects each (:func:`~breastfusion.explain.gallery.select_cases`).

    Raises:
        ValueError: a subject that is not in the cohort.
    """
    if not subjects:
        sides = select_cases(per_subject, n_cases)
        return sides["correct"] + sides["misclassified"], set(sides["misclassified"])
    unknown = sorted(set(map(str, subjects)) - set(art.lesions["subject_id"]))
    if unknown:
        raise ValueError(f"subject(s) {unknown[:10]} are not in the cohort at {art.cohort.root}")
    called = per_subject["prob"] >= per_subject["threshold"]
    wrong = set(per_subject.loc[called != (per_subject["y"] == 1), "subject_id"])
    chosen = list(dict.fromkeys(map(str, subjects)))
    return chosen, {s for s in chosen if s in wrong}


def _lesion_explanations(art: RunArtifacts, variant: str, out: Path, *, importance_repeats: int, seed: int,
                         progress: Progress | None) -> dict[str, Any]:
    """The explanations of every lesion: modality contributions and, when the variant reads clinical data,
    the clinical variables' permutation importance (tables written to ``out``)."""
    task = progress.add_task("modality contributions", total=None) if progress else None
    result: dict[str, Any] = {"contribution": _contributions(art, variant, out)}
    if "clinical" in art.modalities(variant) and len(art.cohort.clinical.columns) > 1:
        if progress:
            progress.update(task, description="clinical permutation importance")
        importance = clinical_permutation_importance(art, variant, n_repeats=importance_repeats, seed=seed)
        importance.to_csv(out / "clinical_importance.csv", index=False)
        result["clinical_importance"] = importance.drop(columns="auc").to_dict(orient="records")
        result["clinical_importance_auc"] = float(importance["auc"].iloc[0]) if len(importance) else None
    if progress:
        progress.remove_task(task)
    return result


class _Heatmaps:
    """Draws and scores the heatmaps of chosen subjects' images, each by the fold network that held it out.

    Collects, image by image: a record (``heatmaps.csv``), the deletion / insertion curves of ``method`` and of
    a random heatmap, and, where the image has a lesion mask, the faithfulness rows of every method and of the
    centre and random baselines (``faithfulness.csv``); the heatmaps of ``method`` go to ``heatmaps.npz`` and
    their overlays to ``out/heatmaps``. Fold networks and target layers are made once each. A fold's seed
    ensemble (``training.seeds > 1``) gets the mean of its members' heatmaps, scored against its own prediction.
    """

    def __init__(self, art: RunArtifacts, variant: str, *, method: str, out: Path,
                 faithfulness_methods: tuple[str, ...], target_layers: dict[str, str], scorecam_batch: int,
                 rng: np.random.Generator, progress: Progress | None):
        self.art, self.variant, self.method, self.out = art, variant, method, out
        self.faithfulness_methods, self.target_layers = faithfulness_methods, target_layers
        self.scorecam_batch, self.rng, self.progress = scorecam_batch, rng, progress
        self.image_modalities = [m for m in art.modalities(variant) if m in IMAGE_MODALITIES]
        self.lesion_pos = {lid: i for i, lid in enumerate(art.lesions["lesion_id"])}
        self.nets: dict[int, Any] = {}
        self.layers: dict[tuple[int, str], list[TargetLayer]] = {}  # one per single network of the fold
        self.records: list[dict] = []
        self.faith_rows: list[dict] = []
        self.curves: list[dict] = []
        self.store: dict[str, np.ndarray] = {}
        self._task = None

    def draw(self, chosen: list[str], misclassified: set[str], per_subject: pd.DataFrame) -> dict[str, list]:
        """Every image of the ``chosen`` subjects; returns the gallery's cases per side."""
        art = self.art
        n_images = sum(int(art.images.views[m][self.lesion_pos[lid]].sum()) for m in self.image_modalities
                       for lid in art.lesions.loc[art.lesions["subject_id"].isin(chosen), "lesion_id"])
        if self.progress:
            self._task = self.progress.add_task(f"heatmaps ({self.method})", total=n_images)
        scores = per_subject.set_index("subject_id")
        cases: dict[str, list] = {"correct": [], "misclassified": []}
        for sid in chosen:
            panels = [panel for lid in art.lesions.loc[art.lesions["subject_id"] == sid, "lesion_id"]
                      for panel in self._lesion(sid, lid)]
            y = int(scores.loc[sid, "y"]) if sid in scores.index else -1
            prob = scores["prob"].get(sid, float("nan"))
            label = f"{sid} · {'malignant' if y == 1 else 'benign'} · p={prob:.2f}"
            cases["misclassified" if sid in misclassified else "correct"].append({"label": label, "panels": panels})
        if self.progress and self._task is not None:
            self.progress.remove_task(self._task)
        return cases

    def write_tables(self) -> None:
        """``heatmaps.csv``, ``faithfulness.csv`` (one row per image and method; random: one per draw, for paired
        comparisons) and ``heatmaps.npz``, for what was drawn."""
        pd.DataFrame(self.records).to_csv(self.out / "heatmaps.csv", index=False)
        if self.faith_rows:
            pd.DataFrame(self.faith_rows).to_csv(self.out / "faithfulness.csv", index=False)
        if self.store:
            np.savez_compressed(self.out / "heatmaps.npz", **self.store)

    def _network(self, k: int):
        if k not in self.nets:
            self.nets[k] = self.art.network(self.variant, k)
        return self.nets[k]

    def _layer(self, k: int, model: OneImageModel | EnsembleImageModel) -> list[TargetLayer]:
        """The target layers of fold ``k``'s networks for ``model``'s modality, found once per fold."""
        if (k, model.modality) not in self.layers:
            self.layers[(k, model.modality)] = find_target_layers(model, name=self.target_layers.get(model.modality))
        return self.layers[(k, model.modality)]

    def _lesion(self, sid: str, lid: str) -> list[tuple[str, np.ndarray]]:
        """The gallery panels of one lesion's images (every image modality, every present view)."""
        art = self.art
        pos = self.lesion_pos[lid]
        k = int(art.test_fold[pos])
        net = self._network(k)
        data = art.dataset(self.variant, k, np.array([pos]))
        raw = {key: value[:1] for key, value in data.tensors.items()}
        batch = prepare_batch(raw)
        members = network_members(net)
        with torch.no_grad():
            branch_outputs = [{m: branch(batch) for m, branch in member.branches.items()} for member in members]
        panels = []
        for modality in self.image_modalities:
            views = art.images.views[modality][pos]
            view_names = _view_names(art, pos, modality)
            view_features = [encode_views(member, batch, modality) for member in members]
            for slot in np.flatnonzero(views.numpy()):
                model = image_model(net, batch, modality, int(slot), branch_outputs=branch_outputs,
                                    view_features=view_features).eval()
                where = {"subject_id": sid, "lesion_id": lid, "fold": k, "modality": modality,
                         "view": view_names[int(slot)]}
                panels.append(self._image(model, self._layer(k, model), where, raw[modality][0, slot],
                                          batch[modality][0, slot], art.lesion_mask(pos, modality, int(slot))))
                if self.progress:
                    self.progress.advance(self._task)
        return panels

    def _image(self, model: OneImageModel | EnsembleImageModel, layers: list[TargetLayer], where: dict[str, Any],
               raw: torch.Tensor, prepared: torch.Tensor, mask: np.ndarray | None) -> tuple[str, np.ndarray]:
        """One image's heatmaps, overlay, curves and (with a mask) faithfulness rows; returns its gallery panel."""
        method, modality, view = self.method, where["modality"], where["view"]
        methods = self.faithfulness_methods if mask is not None else (method,)
        maps, logit = compute_cams(model, methods, target_layer=layers, batch_size=self.scorecam_batch)
        image = _image_to_display(raw)
        name = f"{where['subject_id']}_{modality}_{view}".replace("/", "_")
        save_overlay(image, maps[method], self.out / "heatmaps" / f"{name}_{method}.png", mask=mask)
        self.store[name] = maps[method]
        sign = 1.0 if logit >= 0 else -1.0

        def prob(x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(sign * model(x)[:, 0])

        curve = deletion_insertion(prob, prepared, maps[method])
        random_curve = deletion_insertion(prob, prepared, random_heatmap(maps[method].shape, self.rng))
        self.curves.append({"modality": modality, "deletion_auc": curve["deletion_auc"],
                            "insertion_auc": curve["insertion_auc"],
                            "random_deletion_auc": random_curve["deletion_auc"],
                            "random_insertion_auc": random_curve["insertion_auc"],
                            "deletion": curve["deletion"], "insertion": curve["insertion"]})
        record = {**where, "logit": logit, "target_layer": layers[0].name}
        if mask is not None:
            tol = pointing_tolerance(mask.shape[1])
            record["mask_fraction"] = float(mask.mean())
            record["tolerance_px"] = tol
            self._faithfulness(where, maps, mask, tol)
        self.records.append(record)
        return f"{modality[:5]} {view}", overlay(image, maps[method], mask=mask)

    def _faithfulness(self, where: dict[str, Any], maps: dict[str, np.ndarray], mask: np.ndarray, tol: int) -> None:
        """Energy in the mask and the pointing game of every method's heatmap, the centre and random baselines."""
        row = {"subject_id": where["subject_id"], "lesion_id": where["lesion_id"], "view": where["view"]}
        baselines = [("centre", centre_heatmap(mask.shape))]
        baselines += [("random", random_heatmap(mask.shape, self.rng)) for _ in range(_RANDOM_DRAWS)]
        for method, heat in [*maps.items(), *baselines]:
            self.faith_rows.append({**row, "method": method, "modality": where["modality"],
                                    "energy_in_mask": energy_in_mask(heat, mask),
                                    "pointing_game": pointing_game(heat, mask, tolerance=tol)})


def _view_names(art: RunArtifacts, position: int, modality: str) -> list[str]:
    """View names in slot order."""
    views = art.image_rows(position, modality)["view"].astype(str).tolist()
    names = [v if v and v != "nan" else f"image{i + 1}" for i, v in enumerate(views)]
    return names + [f"slot{i}" for i in range(len(names), int(art.images.views[modality].shape[1]))]


def _summarise_faithfulness(rows: list[dict], records: list[dict], curves: list[dict],
                            method: str) -> dict[str, Any] | None:
    summary: dict[str, Any] = {}
    if rows:
        frame = pd.DataFrame(rows)
        table = []
        for (m, modality), g in frame.groupby(["method", "modality"], sort=False):
            table.append({"method": m, "modality": modality, "n": int(len(g)) if m != "random"
                          else int(len(g) // _RANDOM_DRAWS),
                          "energy_in_mask": float(g["energy_in_mask"].mean()),
                          "energy_in_mask_sd": float(g["energy_in_mask"].std(ddof=1)) if len(g) > 1 else 0.0,
                          "pointing_game": float(g["pointing_game"].mean())})
        masked = pd.DataFrame([r for r in records if "mask_fraction" in r])
        summary["masks"] = {"n_images": int(len(masked)),
                            "mask_fraction": {m: float(g["mask_fraction"].mean())
                                              for m, g in masked.groupby("modality")},
                            "tolerance_px": {m: int(g["tolerance_px"].max()) for m, g in masked.groupby("modality")}}
        summary["table"] = table
    if curves:
        frame = pd.DataFrame(curves)
        summary["deletion_insertion"] = {
            "method": method, "n_images": int(len(frame)),
            **{key: float(frame[key].mean()) for key in
               ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")},
            "mean_deletion_curve": np.mean(np.stack(frame["deletion"]), axis=0).round(4).tolist(),
            "mean_insertion_curve": np.mean(np.stack(frame["insertion"]), axis=0).round(4).tolist()}
    return summary or None


def _update_run(art: RunArtifacts, explanations: dict[str, Any], gallery: Path | None) -> None:
    """Add ``explanations`` to the run's ``results.json`` (through the run's own strict writer) and re-render
    ``report.html`` with the gallery."""
    from breastfusion.report.html import write_report

    layout = art.layout
    results = json.loads(layout.results.read_text())
    results["explanations"] = explanations
    results = write_results(results, layout)
    write_report(results, roc_png=layout.roc, config_yaml=layout.config.read_text(),
                 path=layout.report, figures={"gallery": gallery} if gallery else None)


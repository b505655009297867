"""Real-data accuracy: the shipped configs against plain scripts, on identical folds, in one run.

Usage:
    python bench/real_data.py [--data ../shared/data] [--work DIR] [--epochs-scale 1.0] [--cv-seed N]
        [--sections busi,busi_pretrained,busi_plain,busi_plain_pretrained,busi_roi,busi_roi_plain,busi_localised,
                    busi_ensemble,busi_pair,busi_trio,busi_quartet,busi_pooled,busi_scratch_pooled,breast,breast_roi,
                    breast_pooled,breastmnist]

Sections (each prepares its dataset through the toolkit's adapters, read in place):

* ``busi``: BUSI (normal cases left out, near-duplicates grouped by ``data check --group-duplicates``),
  ``configs/bus_clinical.yaml --variants ultrasound``: the shipped default, from scratch, 5-fold grouped CV;
* ``busi_pretrained``: the same folds with ``configs/bus_clinical_lite0.yaml`` (EfficientNet-Lite0 from the
  ImageNet weights of the ``pretrained-lite0`` extra, three seeds per fold);
* ``busi_plain``: a plain timm ResNet-18 from scratch at 128 px (``bench/plain_baselines.py``) on the same folds;
* ``busi_plain_pretrained``: the plain script fine-tuning the same ImageNet EfficientNet-Lite0 weights, same folds;
* ``busi_roi``: the same folds with ``configs/bus_clinical_roi.yaml``: from scratch, each image cropped to its
  lesion (the dataset's mask box with a margin), the task when a reader marks the lesion;
* ``busi_roi_plain``: the plain ResNet-18 script on the same lesion crops (same margin), same folds;
* ``busi_localised``: the same folds with ``configs/bus_clinical_localised.yaml``: the whole-frame task again, each
  held-out image cropped to the box of a lesion localiser fitted on the fold's training masks (no mask is read for
  a held-out image), the networks fitted on cross-fitted crops; also the localisers' box IoU with the readers'
  masks;
* ``busi_ensemble``: ``breastfusion ensemble`` of the ``busi_pretrained`` run with the ``busi_localised`` run, and
  with the ``busi`` run (needs them in the same ``--work``): the mean of the two networks' logits, fold by fold;
  DeLong against each member;
* ``busi_pair``: the same folds with ``configs/bus_clinical_pair.yaml``, the from-scratch recipe for cohorts with
  training masks: ``bus_clinical.yaml`` and ``bus_clinical_localised.yaml`` fitted and ensembled in one run
  (members under ``WORK/runs/busi_pair/members``); DeLong against each member;
* ``busi_trio``: the same folds with ``configs/bus_clinical_lite0_trio.yaml`` (Lite0 + the pair's two networks,
  which it takes from ``busi_pair``'s run, and Lite0 from ``busi_pretrained``'s, when there are some);
* ``busi_quartet``: the same folds with ``configs/bus_clinical_lite0_quartet.yaml`` (the trio + Lite0 on the
  localiser's crops, which shares the localised member's fold localisers; the trio's three runs are taken from
  ``busi_trio``'s when there are some: only Lite0 on the crops is trained);
* ``busi_pooled``: the same folds with ``configs/bus_clinical_lite0_pooled.yaml`` on BUSI with every
  BrEaST-Lesions lesion pooled into each training fold (never tested: ``breastfusion data pool``,
  ``cv.training_only_column``), the cohort written under ``WORK/pooled`` (images linked); its three Lite0 networks
  per fold trained member by member as one-network runs (``runs/busi_pooled``, ``_m1``, ``_m2``) and averaged by
  ``breastfusion ensemble``, which equals ``training.seeds: 3``;
* ``busi_scratch_pooled``: the same with ``configs/bus_clinical_pooled.yaml``, the from-scratch recipe for a cohort
  with a second one pooled into training (three networks per fold, ``runs/busi_scratch_pooled``, ``_m1``, ``_m2``);
* ``breast``: BrEaST-Lesions, ``configs/bus_clinical.yaml`` (clinical, ultrasound, fused), the DeLong test of
  fused vs ultrasound, and on the same folds the plain logistic regression + plain CNN average;
* ``breast_roi``: the same with ``configs/bus_clinical_roi.yaml`` (clinical, ultrasound, fused), the plain CNN on
  the same lesion crops;
* ``breast_pooled``: BrEaST-Lesions with ``configs/bus_clinical_lite0_pooled.yaml`` (ultrasound, fused) cut to one
  network per fold (:data:`POOLED_BENCH`) and every BUSI lesion pooled into each training fold of the ultrasound
  network (the clinical learner sees BrEaST's training lesions only, the only ones with clinical data); DeLong
  fused vs ultrasound;
* ``breastmnist``: ``configs/breastmnist.yaml``: trained on the official train split (val for early stopping
  and thresholds), reported on the official test split.

With ``--cv-seed N`` every cross-validated section runs on the folds of seed N instead of the configs' own (0),
under ``WORK/cvseedN``, into ``bench/results/real_data_cvseedN.json`` (same keys): a replicate that shows how much
of a figure is the luck of one split. (``breastmnist`` has official splits and is refused there.)

Prints a table and writes ``bench/results/real_data.json`` (AUCs with bootstrap CIs, DeLong p, wall times);
asserts nothing. A section that is not run keeps its figures from the previous JSON; ``measured`` gives each
section's date and command. Sections may run in parallel processes (e.g. one pinned to each core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "real_data.json"
SECTIONS = ("busi", "busi_pretrained", "busi_plain", "busi_plain_pretrained", "busi_roi", "busi_roi_plain",
            "busi_localised", "busi_ensemble", "busi_pair", "busi_trio", "busi_quartet", "busi_pooled",
            "busi_scratch_pooled", "breast", "breast_roi", "breast_pooled", "breastmnist")
#: ``--cv-seed``: the fold seed every config is run with (None: the configs' own).
CV_SEED: int | None = None
#: The lesion-ROI (reader-marked lesion) config; its ultrasound ``roi_margin`` is the plain ROI script's too.
ROI_CONFIG = ROOT / "configs" / "bus_clinical_roi.yaml"
#: The from-scratch recipe for cohorts with training masks: whole-frame + localised networks, ensembled.
PAIR_RECIPE = ROOT / "configs" / "bus_clinical_pair.yaml"
#: With ImageNet weights and training masks: Lite0 + the pair's two networks, ensembled.
TRIO_RECIPE = ROOT / "configs" / "bus_clinical_lite0_trio.yaml"
#: The trio + Lite0 on the localiser's crops.
QUARTET_RECIPE = ROOT / "configs" / "bus_clinical_lite0_quartet.yaml"
#: Lite0 trained on a cohort with another pooled into its training folds.
POOLED_CONFIG = ROOT / "configs" / "bus_clinical_lite0_pooled.yaml"
#: The from-scratch recipe trained on a cohort with another pooled into its training folds.
SCRATCH_POOLED_CONFIG = ROOT / "configs" / "bus_clinical_pooled.yaml"
#: ``breast_pooled``'s cut of it: one network per fold (a third of the config's training); ``breast_pooled_seeds``
#: in the results says so.
POOLED_BENCH = {"training": {"seeds": 1}}
#: Datasets a section (or ``--pool`` of the recipe scripts) pools in, with whether their near-duplicates are grouped.
POOLABLE = {"busi": True, "breast_lesions_usg": False}


def prepare(name: str, data: Path, work: Path, *, group_duplicates: bool = False):
    """The dataset ``name`` as a cohort folder under ``work`` (images linked in place, never copied)."""
    from breastfusion.data.adapters import get_adapter
    from breastfusion.data.adapters.base import write_prepared
    from breastfusion.data.check import check_cohort, group_duplicates as write_groups
    from breastfusion.data.manifest import load_cohort

    out = work / name
    if not (out / "manifest.csv").is_file():
        write_prepared(get_adapter(name)(data / name), out)
    if not group_duplicates:
        return load_cohort(out)
    grouped = out / "manifest.grouped.csv"
    if not grouped.is_file():
        write_groups(load_cohort(out), check_cohort(load_cohort(out)))
    return load_cohort(grouped)


def pooled_cohort(cohort, other: str, data: Path, work: Path):
    """``cohort`` with every lesion of the dataset ``other`` pooled into its training folds: a manifest folder under
    ``work/pooled`` (images linked, written once; run it with ``cv.training_only_column: training_only``)."""
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.pooling import write_pooled

    folder = work / "pooled" / f"{Path(cohort.root).name}+{other}"
    if not (folder / "manifest.csv").is_file():
        write_pooled(cohort, {other: prepare(other, data, work, group_duplicates=POOLABLE[other])}, folder)
    return load_cohort(folder)


def on_bench_folds(config):
    """``config`` on the folds of ``--cv-seed`` when one is given."""
    if CV_SEED is None:
        return config
    return config.model_copy(update={"cv": config.cv.model_copy(update={"seed": CV_SEED})})


def load_bench_config(path: Path):
    """The config at ``path``, on the folds of ``--cv-seed`` when one is given."""
    from breastfusion.config import load_config

    return on_bench_folds(load_config(path))


def bench_settings(config, *, variants: list[str] | None = None, epochs_scale: float = 1.0):
    """``config`` on the bench's folds, cut to ``variants``, with every epoch count scaled (smoke runs)."""
    from breastfusion.config import select_variants

    config = on_bench_folds(config)
    if variants:
        config = select_variants(config, variants)
    if epochs_scale != 1.0:
        t = config.training
        config = config.model_copy(update={"training": t.model_copy(update={
            "epochs": max(1, round(t.epochs * epochs_scale)),
            "finetune_epochs": max(1, round(t.finetune_epochs * epochs_scale))})})
    return config


def run_config(cohort, config_path: Path, out: Path, *, variants: list[str] | None = None,
               epochs_scale: float = 1.0, overrides: dict | None = None) -> tuple[dict, float, object]:
    """``breastfusion run CONFIG`` on ``cohort`` (with the nested ``overrides`` merged into the config): (results.json,
    seconds, the resolved config)."""
    from breastfusion.config import load_config
    from breastfusion.experiment.run import run_experiment
    from breastmnist_selection import with_overrides

    config = load_config(config_path)
    if overrides:
        config = with_overrides(config, overrides)
    config = bench_settings(config, variants=variants, epochs_scale=epochs_scale)
    start = time.perf_counter()
    run_experiment(cohort, config, out)
    return json.loads((out / "results.json").read_text()), time.perf_counter() - start, config


def auc_entry(y, prob, *, n_boot: int = 1000) -> dict:
    """AUC with its stratified-bootstrap 95% CI (the toolkit's own estimator)."""
    from breastfusion.evaluation.metrics import auc_with_ci

    auc, (lo, hi) = auc_with_ci(y, prob, n_boot=n_boot, seed=0)
    return {"auc": float(auc), "auc_ci": [float(lo), float(hi)]}


def variant_entry(results: dict, name: str) -> dict:
    """A variant's AUC, CI and DeLong test against the run's reference, from results.json."""
    v = results["variants"][name]
    return {"auc": v["auc"], "auc_ci": v["auc_ci"], "delong_vs_reference": v.get("delong")}


def same_folds(cohort, config) -> list:
    """The (train, test) positions the toolkit used for ``config`` on ``cohort``: the plain scripts' folds."""
    from breastfusion.experiment.crossval import fold_positions

    return [(p.train, p.test) for p in fold_positions(cohort, config)[0]]


def first_rows(cohort):
    """Each lesion's first manifest row, in ``cohort.lesions`` order (these datasets have one image a lesion)."""
    return cohort.manifest.drop_duplicates("lesion_id").set_index("lesion_id").loc[cohort.lesions["lesion_id"]]


def image_paths(cohort) -> list[str]:
    """One image path per lesion, in ``cohort.lesions`` order."""
    return [str(cohort.root / p) for p in first_rows(cohort)["path"]]


def _busi_ultrasound(data: Path, work: Path, args, config_path: Path, run_name: str, key: str, *,
                     pool: str | None = None, overrides: dict | None = None) -> dict:
    """The ``ultrasound`` variant of ``config_path`` (with ``overrides``) on grouped BUSI (with the dataset ``pool``
    pooled into its training folds): ``{key}_auc``, ``_auc_ci``, ``_seconds``."""
    cohort = prepare("busi", data, work, group_duplicates=True)
    if pool is not None:
        cohort = pooled_cohort(cohort, pool, data, work)
    results, seconds, _ = run_config(cohort, config_path, work / "runs" / run_name, variants=["ultrasound"],
                                     epochs_scale=args.epochs_scale, overrides=overrides)
    e = variant_entry(results, "ultrasound")
    n_pooled = results["cohort"].get("n_training_only", 0)
    return {f"{key}_auc": e["auc"], f"{key}_auc_ci": e["auc_ci"], f"{key}_seconds": seconds,
            "busi_n_lesions": int(len(cohort.lesions)) - n_pooled,
            **({f"{key}_n_pooled": n_pooled} if pool is not None else {})}


def section_busi(data: Path, work: Path, args) -> dict:
    return _busi_ultrasound(data, work, args, ROOT / "configs" / "bus_clinical.yaml", "busi", "busi_default")


def section_busi_pretrained(data: Path, work: Path, args) -> dict:
    return _busi_ultrasound(data, work, args, ROOT / "configs" / "bus_clinical_lite0.yaml", "busi_lite0",
                            "busi_pretrained")


def section_busi_pooled(data: Path, work: Path, args) -> dict:
    """The pooled ImageNet config on BUSI with BrEaST-Lesions pooled in: ``busi_pooled_*``."""
    return _busi_pooled_members(data, work, args, POOLED_CONFIG, "busi_pooled")


def section_busi_scratch_pooled(data: Path, work: Path, args) -> dict:
    """The pooled from-scratch config on BUSI with BrEaST-Lesions pooled in: ``busi_scratch_pooled_*``."""
    return _busi_pooled_members(data, work, args, SCRATCH_POOLED_CONFIG, "busi_scratch_pooled")


def _busi_pooled_members(data: Path, work: Path, args, config_path: Path, key: str) -> dict:
    """A pooled config's seed ensemble trained member by member: member j is a one-network run at the member's
    seed (``training.seed`` + j x MEMBER_SEED_STRIDE; ``runs/{key}``, ``{key}_m1``, ...: each reuses its
    checkpoints), and ``breastfusion ensemble`` of the members is ``training.seeds: K`` itself
    (tests/test_seed_ensemble.py). ``{key}_auc`` is the ensemble's; ``{key}_members`` each member's."""
    import shutil

    from breastfusion.config import load_config
    from breastfusion.experiment.run_ensemble import ensemble_runs
    from breastfusion.models.network import MEMBER_SEED_STRIDE

    training = load_config(config_path).training
    members, runs, seconds, n = {}, [], 0.0, {}
    for j in range(training.seeds):
        name = key if j == 0 else f"{key}_m{j}"
        seed = training.seed + j * MEMBER_SEED_STRIDE
        one = _busi_ultrasound(data, work, args, config_path, name, "member", pool="breast_lesions_usg",
                               overrides={"training": {"seeds": 1, "seed": seed}})
        members[name] = {"auc": one["member_auc"], "auc_ci": one["member_auc_ci"], "seconds": one["member_seconds"],
                         "training_seed": seed}
        runs.append(work / "runs" / name)
        seconds += one["member_seconds"]
        n = {"busi_n_lesions": one["busi_n_lesions"], f"{key}_n_pooled": one["member_n_pooled"]}
    out = {**n, f"{key}_seeds": training.seeds, f"{key}_members": members}
    if len(runs) == 1:
        return {**out, f"{key}_auc": members[key]["auc"], f"{key}_auc_ci": members[key]["auc_ci"],
                f"{key}_seconds": seconds}
    folder = work / "runs" / f"{key}_ensemble"
    shutil.rmtree(folder, ignore_errors=True)  # predictions only: rebuilt from the members in seconds
    v = ensemble_runs(runs, folder, variants=["ultrasound"])["variants"]["ultrasound"]
    first = v["vs_members"][0]
    return {**out, f"{key}_auc": v["auc"], f"{key}_auc_ci": v["auc_ci"], f"{key}_seconds": seconds,
            f"{key}_vs_one_network": {k: first[k] for k in ("auc_difference", "p")}}


def section_busi_plain(data: Path, work: Path, args) -> dict:
    from plain_baselines import load_images, plain_cnn_probs

    cohort = prepare("busi", data, work, group_duplicates=True)
    folds = same_folds(cohort, load_bench_config(ROOT / "configs" / "bus_clinical.yaml"))
    y = cohort.lesions["y"].to_numpy()
    start = time.perf_counter()
    prob = plain_cnn_probs(load_images(image_paths(cohort), 128), y, folds, arch="resnet18",
                           epochs=max(1, round(20 * args.epochs_scale)))
    e = auc_entry(y, prob)
    return {"busi_plain_baseline_auc": e["auc"], "busi_plain_baseline_auc_ci": e["auc_ci"],
            "busi_plain_baseline_seconds": time.perf_counter() - start,
            "busi_plain_baseline": "timm resnet18 from scratch, 128 px squashed, hflip, Adam 1e-3, 20 epochs"}


def section_busi_plain_pretrained(data: Path, work: Path, args) -> dict:
    """The plain script with the same ImageNet EfficientNet-Lite0 weights as ``busi_pretrained``: does the toolkit
    beat a plain fine-tuning loop given the same start?"""
    from timm.models import adapt_input_conv

    from breastfusion.models.weights import lite0_state_dict
    from plain_baselines import load_images, plain_cnn_probs

    state = {k: v for k, v in lite0_state_dict().items() if not k.startswith("classifier")}
    state["conv_stem.weight"] = adapt_input_conv(1, state["conv_stem.weight"])
    cohort = prepare("busi", data, work, group_duplicates=True)
    folds = same_folds(cohort, load_bench_config(ROOT / "configs" / "bus_clinical_lite0.yaml"))
    y = cohort.lesions["y"].to_numpy()
    start = time.perf_counter()
    prob = plain_cnn_probs(load_images(image_paths(cohort), 128), y, folds, arch="efficientnet_lite0",
                           epochs=max(1, round(12 * args.epochs_scale)), state_dict=state)
    e = auc_entry(y, prob)
    return {"busi_plain_pretrained_auc": e["auc"], "busi_plain_pretrained_auc_ci": e["auc_ci"],
            "busi_plain_pretrained_seconds": time.perf_counter() - start,
            "busi_plain_pretrained": "timm efficientnet_lite0 from the same ImageNet weights, 128 px squashed, "
                                     "hflip, Adam 1e-3, 12 epochs"}


def section_busi_roi(data: Path, work: Path, args) -> dict:
    return _busi_ultrasound(data, work, args, ROI_CONFIG, "busi_roi", "busi_roi")


def section_busi_localised(data: Path, work: Path, args) -> dict:
    out = _busi_ultrasound(data, work, args, ROOT / "configs" / "bus_clinical_localised.yaml", "busi_localised",
                           "busi_localised")
    results = json.loads((work / "runs" / "busi_localised" / "results.json").read_text())
    out["busi_localised_box_iou"] = results["localisation"]["ultrasound"]
    return out


def section_busi_ensemble(data: Path, work: Path, args) -> dict:
    """``breastfusion ensemble`` of the ``busi_pretrained`` run with the ``busi_localised`` run, and (for
    comparison, no masks) with the ``busi`` run (same folds): the mean logit of the ImageNet whole-frame network
    and a from-scratch one, each fold's threshold on their averaged calibration scores; with the paired DeLong
    test against each member."""
    import shutil

    from breastfusion.experiment.run_ensemble import ensemble_runs

    out = {}
    for key, partner in (("busi_pretrained_ensemble", "busi_localised"),
                         ("busi_pretrained_default_ensemble", "busi")):
        members = [work / "runs" / "busi_lite0", work / "runs" / partner]
        missing = [str(m) for m in members if not (m / "results.json").is_file()]
        if missing:
            raise SystemExit(f"busi_ensemble averages the runs of busi_pretrained with busi_localised and busi; "
                             f"{missing} not found: run those sections first with the same --work")
        folder = work / "runs" / f"{key}"
        shutil.rmtree(folder, ignore_errors=True)  # predictions only: rebuilt from the members in seconds
        start = time.perf_counter()
        results = ensemble_runs(members, folder, variants=["ultrasound"])
        v = results["variants"]["ultrasound"]
        vs = {Path(t["run"]).name: t for t in v["vs_members"]}
        out |= {f"{key}_auc": v["auc"], f"{key}_auc_ci": v["auc_ci"],
                f"{key}_seconds": time.perf_counter() - start,
                f"{key}_vs_pretrained": {k: vs["busi_lite0"][k] for k in ("auc_difference", "p")},
                f"{key}_vs_partner": {k: vs[partner][k] for k in ("auc_difference", "p")},
                key: f"breastfusion ensemble RUN(bus_clinical_lite0) RUN({partner}) --variants ultrasound"}
    return out


def _busi_recipe(data: Path, work: Path, args, recipe_path: Path, key: str,
                 seeds: dict[str, Path] | None = None) -> dict:
    """``breastfusion run RECIPE --variants ultrasound`` on grouped BUSI into ``WORK/runs/KEY``: ``{key}_auc``,
    ``_auc_ci``, ``_seconds`` and each member's AUC with the paired DeLong test of the ensemble against it.

    ``seeds``: member name -> a finished run folder of the same config on the same folds (another section's),
    copied in as that member before the recipe runs, so the recipe resumes it instead of training it again (the
    recipe refuses a copy whose config differs)."""
    import shutil

    from breastfusion.experiment.ensemble_recipe import load_ensemble_recipe, member_dir, run_ensemble_recipe

    cohort = prepare("busi", data, work, group_duplicates=True)
    recipe = load_ensemble_recipe(recipe_path)
    recipe = recipe.model_copy(update={"members": {
        name: bench_settings(config, variants=["ultrasound"], epochs_scale=args.epochs_scale)
        for name, config in recipe.members.items()}})
    out = work / "runs" / key
    (out / "results.json").unlink(missing_ok=True)  # a rerun keeps finished members and rebuilds the ensemble
    reused = {}
    for name, folder in (seeds or {}).items():
        target = member_dir(out, name)
        if (folder / "results.json").is_file() and not target.exists():
            shutil.copytree(folder, target)
        reused[name] = str(folder) if target.exists() else None
    start = time.perf_counter()
    results = run_ensemble_recipe(cohort, recipe, out)
    v = results["variants"]["ultrasound"]
    members = {Path(t["run"]).name: {"auc": m["variants"]["ultrasound"]["auc"], "auc_difference": t["auc_difference"],
                                     "p": t["p"]}
               for t, m in zip(v["vs_members"], results["ensemble"]["members"])}
    return {f"{key}_auc": v["auc"], f"{key}_auc_ci": v["auc_ci"], f"{key}_seconds": time.perf_counter() - start,
            f"{key}_members": members, "busi_n_lesions": int(len(cohort.lesions)),
            **({f"{key}_reused_members": reused} if reused else {}),
            key: f"breastfusion run configs/{recipe_path.name} --variants ultrasound (members "
                 f"{', '.join(recipe.members)}; ensemble vs each member: paired DeLong)"}


def section_busi_pair(data: Path, work: Path, args) -> dict:
    """``configs/bus_clinical_pair.yaml``: the from-scratch recipe for cohorts with training masks, the whole-frame
    and the localised network fitted and ensembled in one run."""
    return _busi_recipe(data, work, args, PAIR_RECIPE, "busi_pair")


def section_busi_trio(data: Path, work: Path, args) -> dict:
    """``configs/bus_clinical_lite0_trio.yaml``: the pretrained recipe for cohorts with training masks (Lite0 + the
    pair's two from-scratch networks). The pair's members are taken from ``busi_pair`` and Lite0 from
    ``busi_pretrained`` when they ran in this ``--work`` (the same configs and folds), so with both nothing is
    trained here."""
    pair = work / "runs" / "busi_pair" / "members"
    return _busi_recipe(data, work, args, TRIO_RECIPE, "busi_trio",
                        seeds={"lite0": work / "runs" / "busi_lite0", "whole_frame": pair / "whole_frame",
                               "localised": pair / "localised"})


def section_busi_quartet(data: Path, work: Path, args) -> dict:
    """``configs/bus_clinical_lite0_quartet.yaml``: the trio + Lite0 on the localiser's crops. The trio's members are
    taken from ``busi_trio`` when it ran in this ``--work``; the new member reuses the localised member's fold
    localisers (the recipe shares them), so only its networks are trained here."""
    trio = work / "runs" / "busi_trio" / "members"
    return _busi_recipe(data, work, args, QUARTET_RECIPE, "busi_quartet",
                        seeds={name: trio / name for name in ("lite0", "whole_frame", "localised")})


def lesion_masks(cohort) -> list[list[str]]:
    """Each lesion's mask files (manifest ``mask_path``, read as the toolkit reads it), in ``cohort.lesions`` order."""
    from breastfusion.data.cache import roi_inputs

    return [[str(m) for m in roi_inputs(row, cohort.root)[0]] for _, row in first_rows(cohort).iterrows()]


def section_busi_roi_plain(data: Path, work: Path, args) -> dict:
    from plain_baselines import load_roi_images, plain_cnn_probs

    config = load_bench_config(ROI_CONFIG)
    margin = float(config.model.ultrasound.preprocess["roi_margin"])
    cohort = prepare("busi", data, work, group_duplicates=True)
    folds = same_folds(cohort, config)
    y = cohort.lesions["y"].to_numpy()
    start = time.perf_counter()
    prob = plain_cnn_probs(load_roi_images(image_paths(cohort), lesion_masks(cohort), 128, margin=margin), y, folds,
                           arch="resnet18", epochs=max(1, round(20 * args.epochs_scale)))
    e = auc_entry(y, prob)
    return {"busi_roi_plain_auc": e["auc"], "busi_roi_plain_auc_ci": e["auc_ci"],
            "busi_roi_plain_seconds": time.perf_counter() - start,
            "busi_roi_plain": f"timm resnet18 from scratch on the mask box widened by {margin:g} a side, 128 px "
                              "squashed, hflip, Adam 1e-3, 20 epochs"}


def section_breast(data: Path, work: Path, args) -> dict:
    return _breast_rows(data, work, args, ROOT / "configs" / "bus_clinical.yaml", "breast")


def section_breast_roi(data: Path, work: Path, args) -> dict:
    """BrEaST with the lesion-ROI config; the plain CNN gets the same lesion crops."""
    return _breast_rows(data, work, args, ROI_CONFIG, "breast_roi", variants=["clinical", "ultrasound", "fused"])


def section_breast_pooled(data: Path, work: Path, args) -> dict:
    """BrEaST with BUSI pooled into the ultrasound network's training folds; no plain script (the ``breast``
    section's are on the same folds)."""
    return _breast_rows(data, work, args, POOLED_CONFIG, "breast_pooled", pool="busi")


def _breast_rows(data: Path, work: Path, args, config_path: Path, prefix: str, *,
                 variants: list[str] | None = None, pool: str | None = None) -> dict:
    """BrEaST-Lesions with ``config_path``: every variant's AUC, DeLong fused vs ultrasound, and the plain
    logistic regression + plain CNN average on the same folds (the CNN on the config's ROI crops if it crops).
    With ``pool``, that dataset joins every training fold and the plain scripts are left out."""
    from breastfusion.evaluation.delong import delong_test
    from plain_baselines import load_images, load_roi_images, plain_average, plain_clinical_probs, plain_cnn_probs

    cohort = prepare("breast_lesions_usg", data, work)
    if pool is not None:
        cohort = pooled_cohort(cohort, pool, data, work)
    run = work / "runs" / prefix
    results, seconds, config = run_config(cohort, config_path, run, variants=variants, epochs_scale=args.epochs_scale,
                                          overrides=POOLED_BENCH if pool is not None else None)
    n_pooled = results["cohort"].get("n_training_only", 0)
    out = {f"{prefix}_seconds": seconds, f"{prefix}_n_lesions": int(len(cohort.lesions)) - n_pooled}
    for name in results["variants"]:
        e = variant_entry(results, name)
        out[f"{prefix}_{name}_auc"], out[f"{prefix}_{name}_auc_ci"] = e["auc"], e["auc_ci"]
    delong = results["variants"]["ultrasound"]["delong"]  # ultrasound vs the reference (fused)
    out[f"{prefix}_fused_vs_ultrasound_p"] = delong["p"] if delong else None
    if pool is not None:
        return {**out, f"{prefix}_n_pooled": n_pooled, f"{prefix}_seeds": config.training.seeds}
    # The plain script: logistic regression on the clinical table + a plain CNN, averaged, on the same folds.
    folds = same_folds(cohort, config)
    lesions = cohort.lesions
    y = lesions["y"].to_numpy()
    table = cohort.clinical.set_index("subject_id").reindex(lesions["subject_id"]).reset_index(drop=True)
    start = time.perf_counter()
    clinical = plain_clinical_probs(table, y, folds)
    roi = config.model.ultrasound.preprocess
    images = (load_roi_images(image_paths(cohort), lesion_masks(cohort), 128, margin=float(roi["roi_margin"]))
              if roi.get("roi") == "mask" else load_images(image_paths(cohort), 128))
    image = plain_cnn_probs(images, y, folds, arch="resnet18", epochs=max(1, round(20 * args.epochs_scale)))
    plain = plain_average(clinical, image)
    fused = _subject_probs(run, "fused", lesions)
    test = delong_test(y, fused, plain)
    plain_entry = auc_entry(y, plain)
    out.update({f"{prefix}_plain_baseline_auc": plain_entry["auc"],
                f"{prefix}_plain_baseline_auc_ci": plain_entry["auc_ci"],
                f"{prefix}_plain_clinical_auc": auc_entry(y, clinical)["auc"],
                f"{prefix}_plain_cnn_auc": auc_entry(y, image)["auc"],
                f"{prefix}_fused_vs_plain_p": float(test.p_value),
                f"{prefix}_plain_seconds": time.perf_counter() - start})
    return out


def _subject_probs(run: Path, variant: str, lesions) -> "object":
    """A run's out-of-fold lesion probabilities of ``variant`` in ``lesions`` order (one lesion a subject)."""
    import pandas as pd

    pred = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    pred = pred[pred["variant"] == variant].set_index("lesion_id")["prob"]
    return pred.loc[lesions["lesion_id"]].to_numpy()


def section_breastmnist(data: Path, work: Path, args) -> dict:
    cohort = prepare("breastmnist", data, work)
    results, seconds, config = run_config(cohort, ROOT / "configs" / "breastmnist.yaml", work / "runs" / "bmnist",
                                          epochs_scale=args.epochs_scale)
    e = variant_entry(results, "ultrasound")
    size = config.model.ultrasound.image_size
    return {"breastmnist_test_auc": e["auc"], "breastmnist_test_auc_ci": e["auc_ci"],
            "breastmnist_seconds": seconds, "breastmnist_input_px": size, "breastmnist_source_px": 28,
            "breastmnist_n_test": results["variants"]["ultrasound"].get("n_subjects")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {list(SECTIONS)}")
    parser.add_argument("--work", type=Path, help="folder for prepared datasets and runs (default: a temp folder)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="scale every epoch count (smoke runs)")
    parser.add_argument("--cv-seed", type=int, help="run on the folds of this seed (a replicate; own work folder "
                        "and results file)")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; expected names from {list(SECTIONS)}")
    if not args.data.is_dir():
        parser.error(f"{args.data}: no such folder (the real datasets of ../shared/data)")
    work = args.work or Path(tempfile.mkdtemp(prefix="bf-real-"))
    results_path = RESULTS
    if args.cv_seed is not None:
        if "breastmnist" in sections:
            parser.error("breastmnist is reported on its official test split; --cv-seed has no folds to change there")
        global CV_SEED
        CV_SEED = args.cv_seed
        work = work / f"cvseed{args.cv_seed}"
        results_path = RESULTS.with_name(f"real_data_cvseed{args.cv_seed}.json")
    measured: dict[str, str] = {}
    figures: dict[str, object] = {}  # this process's sections only
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for name in sections:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        out = globals()[f"section_{name}"](args.data, work, args)
        out[f"{name}_wall_seconds"] = time.perf_counter() - start
        for key, value in out.items():
            print(f"  {key}: {value}", flush=True)
        figures.update(out)
        measured[name] = {"at": stamp, "command": "python bench/real_data.py " + " ".join(sys.argv[1:])}
    if args.epochs_scale == 1.0:
        # Sections may run in parallel processes (one a core): keep what the others wrote, overlay ours.
        latest = json.loads(results_path.read_text()) if results_path.is_file() else {}
        measured = {**latest.pop("measured", {}), **measured}
        figures = {**{k: v for k, v in latest.items() if k not in ("command", "epochs_scale")}, **figures}
        payload = {"measured": measured, "epochs_scale": args.epochs_scale, **figures}
        if args.cv_seed is not None:
            payload = {"cv_seed": args.cv_seed, **payload}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(payload, indent=2, default=float))
        print(f"wrote {results_path}")
    else:
        print(f"epochs scaled: a smoke run, {results_path.relative_to(ROOT)} left as it was")


if __name__ == "__main__":
    main()

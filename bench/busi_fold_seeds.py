"""The BUSI headline recipes over several fold seeds: mean ± sd of the AUC, so no row rests on one split's luck.

One 5-fold split of 647 images moves a recipe's AUC by 0.01-0.03 (Lite0 0.917 on the seed-0 folds, 0.900 on
cv.seed 1). This gathers what the benches already measured on each fold seed (seed 0: ``bench/real_data.py``
into ``real_data.json``; other seeds: ``bench/busi_recipes.py`` and ``bench/selection_ensembles.py --busi`` into
``busi_recipes.json``, entries named ``*_cvseedN``; a recipe that ``real_data.py`` does not run takes its seed 0
from ``busi_recipes.json`` too), and writes per recipe the AUC of every seed found, their mean and sample sd, the
share of seeds meeting issue 12's target, and for the ensembles the paired DeLong difference against their
stronger member alone on each seed (Lite0; the localised network for the from-scratch pair). Reruns of a recipe on
a seed's folds (another session's draw, or another ``training.seed``) are listed beside that seed's first run and
counted in an every-run mean ± sd. It trains nothing; a seed whose runs are missing is listed as such.

Usage:
    python bench/busi_fold_seeds.py          # prints the table, writes bench/results/busi_fold_seeds.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = RESULTS / "busi_fold_seeds.json"

#: the key under which :func:`main` adds ``real_data_lite0_one_network.json`` (the real_data.json entries of the
#: Lite0 recipes from before bus_clinical_lite0.yaml trained three seeds) to the real_data dict
ONE_NETWORK = "lite0_one_network"

#: ``reruns``: per fold seed, runs of the same config on the same folds made again in a later session (or with another
#: training.seed): other draws of the recipe (training reproduces exactly only within one environment), listed beside
#: the seed's first run and counted in the every-run mean, never left out. The recipe runs of real_data.py
#: (busi_pair, busi_trio) are not listed: in the same environment they reproduce the member runs their seed-0
#: entries were made from, digit for digit, so they are no new draw.
#:
#: recipe → its seed-0 AUC key in real_data.json (a tuple: a path into nested entries, e.g. a recipe member's AUC;
#: absent: seed 0 from busi_recipes.json as well), its
#: busi_recipes.json entry name on cv.seed N ({seed}), issue 12's target and, for an ensemble, the member it is
#: compared with (``versus``: key, name in the table, run-name prefix) and that comparison's seed-0 key in
#: real_data.json
RECIPES: dict[str, dict] = {
    "bus_clinical.yaml (from scratch, whole frame, no masks)": {
        "seed0": "busi_default_auc", "other": "scratch_cvseed{seed}", "target": 0.88,
        "reruns": {0: ["scratch_cvseed0"], 1: ["scratch_cvseed1_rerun"]}},
    "bus_clinical_localised.yaml (from scratch, in-fold localiser; masks for training)": {
        "seed0": "busi_localised_auc", "other": "localised_xfit_cvseed{seed}", "target": 0.88,
        "reruns": {0: ["localised_xfit_cvseed0"], 1: ["localised_xfit_cvseed1_rerun"]}},
    "bus_clinical_lite0.yaml (ImageNet Lite0, a 3-seed ensemble)": {
        "seed0": "busi_pretrained_auc", "other": "lite0_seeds3_cvseed{seed}_2026_12_06", "target": 0.93,
        "reruns": {0: ["lite0_seeds3"]}},  # the same settings in an earlier environment, 2026-12-04 (overrides)
    "ensemble 3-seed Lite0 + localised": {
        "seed0": "busi_pretrained_ensemble_auc", "other": "lite0s3_localised_cvseed{seed}", "target": 0.93,
        "versus": ("lite0", "Lite0", "lite0_seeds3"), "seed0_versus": "busi_pretrained_ensemble_vs_pretrained"},
    "ensemble 3-seed Lite0 + bus_clinical.yaml (no masks)": {
        "seed0": "busi_pretrained_default_ensemble_auc", "other": "lite0s3_scratch_cvseed{seed}", "target": 0.93,
        "versus": ("lite0", "Lite0", "lite0_seeds3"),
        "seed0_versus": "busi_pretrained_default_ensemble_vs_pretrained"},
    "ensemble bus_clinical.yaml + localised (from scratch; masks for training)": {
        "other": "scratch_localised_cvseed{seed}", "target": 0.88,
        "versus": ("localised", "localised", "localised_xfit_cvseed")},
    "ensemble 3-seed Lite0 + bus_clinical.yaml + localised (bus_clinical_lite0_trio.yaml; masks for training)": {
        "seed0": "busi_trio_auc", "other": "lite0s3_trio_cvseed{seed}", "target": 0.93,
        "versus": ("lite0", "Lite0", "lite0_seeds3"), "seed0_versus": ("busi_trio_members", "lite0")},
    "bus_clinical_lite0_localised.yaml (ImageNet Lite0, in-fold localiser; masks for training)": {
        "seed0": ("busi_quartet_members", "lite0_localised", "auc"), "other": "lite0_crops_cvseed{seed}",
        "target": 0.93, "reruns": {0: ["lite0_localised_xfit"]}},  # the same settings, 2026-12-05 (overrides)
    "ensemble of all four (bus_clinical_lite0_quartet.yaml, 3-seed Lite0; masks for training)": {
        "seed0": "busi_quartet_auc", "other": "lite0s3_quartet_cvseed{seed}", "target": 0.93,
        "versus": ("lite0", "Lite0", "lite0_seeds3"), "seed0_versus": ("busi_quartet_members", "lite0")},
    # the same with one Lite0 network per fold (training.seeds: 1, as bus_clinical_lite0.yaml was before
    # 2026-12-06): seed 0 from real_data_lite0_one_network.json, the real_data.json entries of then
    "bus_clinical_lite0.yaml with training.seeds: 1 (one network)": {
        "seed0": (ONE_NETWORK, "busi_pretrained_auc"), "other": "lite0_cvseed{seed}", "target": 0.93,
        "reruns": {0: ["lite0_cvseed0_2026_12_06", "lite0_cvseed0_tseed1", "lite0_cvseed0_tseed2"],
                   1: ["lite0_cvseed1_2026_12_06"]}},
    "ensemble Lite0 (one network) + localised": {
        "seed0": (ONE_NETWORK, "busi_pretrained_ensemble_auc"), "other": "lite0_localised_cvseed{seed}",
        "target": 0.93, "versus": ("lite0", "Lite0", "lite0_cvseed"),
        "seed0_versus": (ONE_NETWORK, "busi_pretrained_ensemble_vs_pretrained"),
        "reruns": {0: ["lite0_localised_cvseed0_2026_12_06"], 1: ["lite0_localised_cvseed1_2026_12_06"]}},
    "ensemble Lite0 (one network) + bus_clinical.yaml (no masks)": {
        "seed0": (ONE_NETWORK, "busi_pretrained_default_ensemble_auc"), "other": "lite0_scratch_cvseed{seed}",
        "target": 0.93, "versus": ("lite0", "Lite0", "lite0_cvseed"),
        "seed0_versus": (ONE_NETWORK, "busi_pretrained_default_ensemble_vs_pretrained")},
    "trio with one Lite0 network (masks for training)": {
        "seed0": (ONE_NETWORK, "busi_trio_auc"), "other": "lite0_trio_cvseed{seed}", "target": 0.93,
        "versus": ("lite0", "Lite0", "lite0_cvseed"), "seed0_versus": (ONE_NETWORK, "busi_trio_members", "lite0")},
    "quartet with one Lite0 network (masks for training)": {
        "seed0": (ONE_NETWORK, "busi_quartet_auc"), "other": "lite0_quartet_cvseed{seed}", "target": 0.93,
        "versus": ("lite0", "Lite0", "lite0_cvseed"),
        "seed0_versus": (ONE_NETWORK, "busi_quartet_members", "lite0")},
    # trained on BUSI with every BrEaST-Lesions lesion pooled into each training fold (never tested)
    # (the config's three networks per fold: three one-network runs at the members' seeds, their logits averaged by
    # bench/selection_ensembles.py --busi or real_data.py's busi_pooled, equal to training.seeds: 3; compared with
    # member 0, the one-network run)
    "bus_clinical_lite0_pooled.yaml (ImageNet Lite0, three networks; BrEaST pooled into training)": {
        "seed0": "busi_pooled_auc", "other": "lite0s3_pool_breast_cvseed{seed}", "target": 0.93,
        "versus": ("pooled", "one network", "lite0_pool_breast_cvseed"), "seed0_versus": "busi_pooled_vs_one_network"},
    "bus_clinical_lite0_pooled.yaml with training.seeds: 1 (one network; BrEaST pooled into training)": {
        "seed0": ("busi_pooled_members", "busi_pooled", "auc"), "other": "lite0_pool_breast_cvseed{seed}",
        "target": 0.93,
        # the three-network row's other two members: one network each, training.seed 10000000 and 20000000
        "reruns": {seed: [f"lite0_pool_breast_cvseed{seed}_m{j}" for j in (1, 2)] for seed in (0, 1, 2)}},
    # from scratch, the same pooling: bus_clinical_pooled.yaml (three one-network runs per fold seed, averaged by
    # selection_ensembles.py --busi or real_data.py's busi_scratch_pooled)
    "bus_clinical_pooled.yaml (from scratch, three networks; BrEaST pooled into training, no masks)": {
        "seed0": "busi_scratch_pooled_auc", "other": "scratch_s3_pool_breast_cvseed{seed}", "target": 0.88,
        "versus": ("pooled", "one network", "scratch_pool_breast_cvseed"),
        "seed0_versus": "busi_scratch_pooled_vs_one_network"},
    "bus_clinical_pooled.yaml with training.seeds: 1 (from scratch, one network; BrEaST pooled into training)": {
        "seed0": ("busi_scratch_pooled_members", "busi_scratch_pooled", "auc"),
        "other": "scratch_pool_breast_cvseed{seed}", "target": 0.88,
        # the three-network row's other two members: one network each, training.seed 10000000 and 20000000
        "reruns": {seed: [f"scratch_pool_breast_cvseed{seed}_m{j}" for j in (1, 2)] for seed in (0, 1, 2)}},
}
#: the fold seeds looked for besides 0
OTHER_SEEDS = (1, 2)


def summarise(real_data: dict, recipes: list[dict], *, other_seeds=OTHER_SEEDS) -> dict:
    """Per recipe: AUC by fold seed, mean, sd (``None`` with fewer than two seeds), the seeds meeting the target,
    the missing seeds, and for ensembles the difference to the ``versus`` member alone (AUC difference and DeLong
    p) by seed, under ``vs_{label}_by_fold_seed``."""
    by_name = {r["name"]: r for r in recipes}
    out = {}
    for recipe, spec in RECIPES.items():
        aucs: dict[str, float] = {}
        versus: dict[str, dict] = {}
        missing = []
        label, _, prefix = spec.get("versus", (None, None, None))
        seeds = list(other_seeds)
        if "seed0" not in spec:
            seeds.insert(0, 0)
        elif (seed0 := _entry(real_data, spec["seed0"])) is not None:
            aucs["0"] = seed0
            compared = _entry(real_data, spec.get("seed0_versus"))
            if compared is not None:
                versus["0"] = {k: compared[k] for k in ("auc_difference", "p")}
        else:
            missing.append(0)
        for seed in seeds:
            entry = by_name.get(spec["other"].format(seed=seed))
            if entry is None:
                missing.append(seed)
                continue
            aucs[str(seed)] = entry["auc"]
            member = [m for m in entry.get("members", []) if prefix and m["run"].split("/")[-1].startswith(prefix)]
            if member:
                versus[str(seed)] = {"auc_difference": member[0]["auc_difference"], "p": member[0]["p"]}
        values = list(aucs.values())
        row = {"auc_by_fold_seed": aucs,
               "mean": statistics.fmean(values) if values else None,
               "sd": statistics.stdev(values) if len(values) > 1 else None,
               "target": spec["target"],
               "fold_seeds_meeting_target": [s for s, v in aucs.items() if v >= spec["target"]],
               "missing_fold_seeds": missing}
        if versus:
            row[f"vs_{label}_by_fold_seed"] = versus
        reruns = _reruns(spec.get("reruns", {}), real_data, by_name)
        if reruns:
            every = values + [v for runs in reruns.values() for v in runs]
            row |= {"reruns_by_fold_seed": reruns, "n_runs": len(every), "all_runs_mean": statistics.fmean(every),
                    "all_runs_sd": statistics.stdev(every) if len(every) > 1 else None,
                    "runs_meeting_target": sum(v >= spec["target"] for v in every)}
        out[recipe] = row
    return out


def _entry(real_data: dict, key: str | tuple[str, ...] | None):
    """``real_data[key]``, or for a tuple the nested entry it leads to; ``None`` where there is none."""
    if key is None:
        return None
    value = real_data
    for part in (key,) if isinstance(key, str) else key:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _reruns(spec: dict[int, list[str]], real_data: dict, by_name: dict[str, dict]) -> dict[str, list[float]]:
    """Each fold seed's rerun AUCs that were found (``real_data:KEY`` names a ``real_data.json`` key, anything else
    a ``busi_recipes.json`` entry)."""
    found: dict[str, list[float]] = {}
    for seed, names in spec.items():
        for name in names:
            if name.startswith("real_data:"):
                auc = real_data.get(name.split(":", 1)[1])
            else:
                auc = by_name.get(name, {}).get("auc")
            if auc is not None:
                found.setdefault(str(seed), []).append(auc)
    return found


def format_table(summary: dict) -> str:
    """The summary as a Markdown table (the README's)."""
    seeds = sorted({s for row in summary.values() for s in row["auc_by_fold_seed"]}, key=int)
    lines = ["| recipe | " + " | ".join(f"fold seed {s}" for s in seeds) + " | mean ± sd | target | every run "
             "(reruns too): mean ± sd, n |", "|---" * (len(seeds) + 4) + "|"]
    for recipe, row in summary.items():
        cells = []
        for s in seeds:
            auc = row["auc_by_fold_seed"].get(s)
            cell = "—" if auc is None else f"{auc:.3f}"
            key, name, _ = RECIPES.get(recipe, {}).get("versus", (None, None, None))
            d = row.get(f"vs_{key}_by_fold_seed", {}).get(s)
            if d is not None and auc is not None:
                cell += f" ({d['auc_difference']:+.3f} vs {name}, p = {d['p']:.2g})"
            again = row.get("reruns_by_fold_seed", {}).get(s)
            if again:
                cell += "; rerun " + ", ".join(f"{v:.3f}" for v in again)
            cells.append(cell)
        spread = "—" if row["mean"] is None else (
            f"{row['mean']:.3f}" + ("" if row["sd"] is None else f" ± {row['sd']:.3f}"))
        met = len(row["fold_seeds_meeting_target"])
        every = "—"
        if "n_runs" in row:
            every = (f"{row['all_runs_mean']:.3f} ± {row['all_runs_sd']:.3f}, n = {row['n_runs']} "
                     f"({row['runs_meeting_target']} at target)")
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {spread} | >= {row['target']}: "
                     f"{met} of {len(row['auc_by_fold_seed'])} seeds | {every} |")
    return "\n".join(lines)


def main() -> None:
    real_data = json.loads((RESULTS / "real_data.json").read_text())
    snapshot = RESULTS / "real_data_lite0_one_network.json"
    if snapshot.is_file():
        real_data[ONE_NETWORK] = json.loads(snapshot.read_text())
    recipes = json.loads((RESULTS / "busi_recipes.json").read_text())["runs"]
    summary = summarise(real_data, recipes)
    print(format_table(summary))
    OUT.write_text(json.dumps({"command": "python bench/busi_fold_seeds.py", "recipes": summary}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""The BUSI headline recipes over several fold seeds: mean ± sd of the AUC, so no row rests on one split's luck.

One 5-fold split of 647 images moves a recipe's AUC by 0.01-0.03 (Lite0 0.917 on the seed-0 folds, 0.900 on
cv.seed 1). This gathers what the benches already measured on each fold seed (seed 0: ``bench/real_data.py``
into ``real_data.json``; other seeds: ``bench/busi_recipes.py`` and ``bench/selection_ensembles.py --busi`` into
``busi_recipes.json``, entries named ``*_cvseedN``), and writes per recipe the AUC of every seed found, their
mean and sample sd, the share of seeds meeting issue 12's target, and for the ensembles the paired DeLong
difference against Lite0 alone on each seed. It trains nothing; a seed whose runs are missing is listed as such.

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

#: recipe → its seed-0 AUC key in real_data.json, its busi_recipes.json entry name on cv.seed N ({seed}),
#: issue 12's target and, for an ensemble, its seed-0 key of the DeLong test against Lite0 alone
RECIPES: dict[str, dict] = {
    "bus_clinical.yaml (from scratch, whole frame, no masks)": {
        "seed0": "busi_default_auc", "other": "scratch_cvseed{seed}", "target": 0.88},
    "bus_clinical_localised.yaml (from scratch, in-fold localiser; masks for training)": {
        "seed0": "busi_localised_auc", "other": "localised_xfit_cvseed{seed}", "target": 0.88},
    "bus_clinical_lite0.yaml (ImageNet Lite0)": {
        "seed0": "busi_pretrained_auc", "other": "lite0_cvseed{seed}", "target": 0.93},
    "ensemble Lite0 + localised": {
        "seed0": "busi_pretrained_ensemble_auc", "other": "lite0_localised_cvseed{seed}", "target": 0.93,
        "seed0_vs_lite0": "busi_pretrained_ensemble_vs_pretrained"},
    "ensemble Lite0 + bus_clinical.yaml (no masks)": {
        "seed0": "busi_pretrained_default_ensemble_auc", "other": "lite0_scratch_cvseed{seed}", "target": 0.93,
        "seed0_vs_lite0": "busi_pretrained_default_ensemble_vs_pretrained"},
}
#: the fold seeds looked for besides 0
OTHER_SEEDS = (1, 2)


def summarise(real_data: dict, recipes: list[dict], *, other_seeds=OTHER_SEEDS) -> dict:
    """Per recipe: AUC by fold seed, mean, sd (``None`` with fewer than two seeds), the seeds meeting the target,
    the missing seeds, and for ensembles the difference to Lite0 alone (AUC difference and DeLong p) by seed."""
    by_name = {r["name"]: r for r in recipes}
    out = {}
    for recipe, spec in RECIPES.items():
        aucs: dict[str, float] = {}
        vs_lite0: dict[str, dict] = {}
        missing = []
        if spec["seed0"] in real_data:
            aucs["0"] = real_data[spec["seed0"]]
            if "seed0_vs_lite0" in spec and spec["seed0_vs_lite0"] in real_data:
                vs_lite0["0"] = real_data[spec["seed0_vs_lite0"]]
        else:
            missing.append(0)
        for seed in other_seeds:
            entry = by_name.get(spec["other"].format(seed=seed))
            if entry is None:
                missing.append(seed)
                continue
            aucs[str(seed)] = entry["auc"]
            lite0 = [m for m in entry.get("members", []) if m["run"].split("/")[-1].startswith("lite0_cvseed")]
            if lite0:
                vs_lite0[str(seed)] = {"auc_difference": lite0[0]["auc_difference"], "p": lite0[0]["p"]}
        values = list(aucs.values())
        row = {"auc_by_fold_seed": aucs,
               "mean": statistics.fmean(values) if values else None,
               "sd": statistics.stdev(values) if len(values) > 1 else None,
               "target": spec["target"],
               "fold_seeds_meeting_target": [s for s, v in aucs.items() if v >= spec["target"]],
               "missing_fold_seeds": missing}
        if vs_lite0:
            row["vs_lite0_by_fold_seed"] = vs_lite0
        out[recipe] = row
    return out


def format_table(summary: dict) -> str:
    """The summary as a Markdown table (the README's)."""
    seeds = sorted({s for row in summary.values() for s in row["auc_by_fold_seed"]}, key=int)
    lines = ["| recipe | " + " | ".join(f"fold seed {s}" for s in seeds) + " | mean ± sd | target |",
             "|---" * (len(seeds) + 3) + "|"]
    for recipe, row in summary.items():
        cells = []
        for s in seeds:
            auc = row["auc_by_fold_seed"].get(s)
            cell = "—" if auc is None else f"{auc:.3f}"
            d = row.get("vs_lite0_by_fold_seed", {}).get(s)
            if d is not None and auc is not None:
                cell += f" ({d['auc_difference']:+.3f} vs Lite0, p = {d['p']:.2g})"
            cells.append(cell)
        spread = "—" if row["mean"] is None else (
            f"{row['mean']:.3f}" + ("" if row["sd"] is None else f" ± {row['sd']:.3f}"))
        met = len(row["fold_seeds_meeting_target"])
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {spread} | >= {row['target']}: "
                     f"{met} of {len(row['auc_by_fold_seed'])} seeds |")
    return "\n".join(lines)


def main() -> None:
    real_data = json.loads((RESULTS / "real_data.json").read_text())
    recipes = json.loads((RESULTS / "busi_recipes.json").read_text())["runs"]
    summary = summarise(real_data, recipes)
    print(format_table(summary))
    OUT.write_text(json.dumps({"command": "python bench/busi_fold_seeds.py", "recipes": summary}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

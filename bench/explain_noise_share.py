"""How much of the output change do exact modality Shapley values give a modality that is pure noise?

Usage:
    OMP_NUM_THREADS=1 python bench/explain_noise_share.py [--cohorts 3] [--seeds 2] [--subjects 800] [--epochs 40] \
        [--fusions gated,concat] [--recipes dropout,control] [--out explain_noise_share]

Synthetic cohorts of ``--subjects`` subjects (:func:`breastfusion.explain.noise_check.noise_cohort`):
ultrasound frames replaced by pixel noise, a clinical marker ``y + N(0, 0.7)``; an ultrasound (timm's
``test_resnet`` at 16 px) + clinical network trained on the first 75% of the subjects, shares measured on
the other 25%. Training recipes (``--epochs`` each), each scored with the empty coalition worth the
network's all-masked output (``network``) and worth the no-information prediction (``prior``, what
``breastfusion explain`` uses):

* ``no_dropout``: trained without modality dropout;
* ``dropout``: modality dropout 0.5 (the test's recipe);
* ``dropout_0.7``: modality dropout 0.7;
* ``dropout_null``: modality dropout 0.5 and gated fusion's learned no-information slot;
* ``control``: the ``dropout`` recipe on the cohort with the ultrasound frames as rendered.

Each for ``--cohorts`` cohort seeds x ``--seeds`` training seeds (``--recipes``: only those). Prints and writes
``bench/results/OUT.json`` (``--out``, by default ``explain_noise_share``); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAIN = {"lr": 0.01, "weight_decay": 0.05}
RECIPES = {  # training overrides, null slot, ultrasound made of noise
    "no_dropout": ({"modality_dropout": 0.0}, False, True),
    "dropout": ({"modality_dropout": 0.5}, False, True),
    "dropout_0.7": ({"modality_dropout": 0.7}, False, True),
    "dropout_null": ({"modality_dropout": 0.5}, True, True),
    "control": ({"modality_dropout": 0.5}, False, False),
}
BASELINES = ("network", "prior")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--fusions", default="gated,concat")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated, of: " + ", ".join(RECIPES))
    parser.add_argument("--out", default="explain_noise_share", help="result name under bench/results")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        parser.error(f"--recipes: unknown {unknown}; expected some of {list(RECIPES)}")

    import numpy as np
    import torch

    from breastfusion.explain.noise_check import noise_cohort, noise_modality_shares

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in range(args.cohorts):
            cohorts = {noise: noise_cohort(Path(tmp) / f"c{c}-{noise}", noise=noise, seed=3 + c,
                                                n_subjects=args.subjects)
                       for noise in (True, False)}
            for fusion in args.fusions.split(","):
                for name in recipes:
                    training, null_slot, noise = RECIPES[name]
                    if null_slot and fusion != "gated":
                        continue
                    for seed in range(args.seeds):
                        recipe = {**TRAIN, "epochs": args.epochs, **training}
                        r = noise_modality_shares(cohorts[noise], fusion=fusion, training=recipe,
                                                  baseline="network", null_slot=null_slot, seed=seed)
                        shares = {b: r["share_by_baseline"][b]["ultrasound"] for b in BASELINES}
                        rows.append({"recipe": name, "fusion": fusion, "cohort_seed": 3 + c, "seed": seed,
                                     "ultrasound_share": shares, "auc": r["auc"], "network_empty": r["empty"],
                                     "ultrasound_alone": r["coalitions"]["ultrasound"]})
                        print(f"{fusion:<6} {name:<13} cohort {3 + c} seed {seed}: ultrasound share "
                              f"{shares['network']:5.1f}% (network empty) {shares['prior']:5.1f}% (prior)  "
                              f"AUC {r['auc']:.3f}", flush=True)
    summary = {}
    for fusion in args.fusions.split(","):
        for name in recipes:
            for baseline in BASELINES:
                shares = [r["ultrasound_share"][baseline] for r in rows
                          if r["recipe"] == name and r["fusion"] == fusion]
                if shares:
                    summary[f"{fusion}/{name}/{baseline}"] = {
                        "mean": float(np.mean(shares)), "min": float(np.min(shares)),
                        "max": float(np.max(shares)), "n": len(shares)}
    record = {"what": __doc__.split("\n\n")[0], "train": TRAIN | {"epochs": args.epochs},
              "n_subjects": args.subjects,
              "recipes": {k: RECIPES[k][0] | {"null_slot": RECIPES[k][1],
                                              "ultrasound": "noise" if RECIPES[k][2] else "as rendered"}
                          for k in recipes},
              "command": "python bench/explain_noise_share.py " + " ".join(sys.argv[1:]),
              "summary_ultrasound_share_percent": summary, "runs": rows,
              "runtime_s": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads()}
    out = Path(__file__).parent / "results" / f"{args.out}.json"
    out.write_text(json.dumps(record, indent=2))
    for key, s in summary.items():
        print(f"{key:<34} ultrasound share mean {s['mean']:5.1f}%  range {s['min']:.1f} – {s['max']:.1f} "
              f"(n={s['n']})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

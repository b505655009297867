"""Statistical validation of the evaluation layer on synthetic cohorts with a known truth.

1. AUC intervals. The synthetic generator gives the exact posterior P(malignant
   | latents) (a calibrated "oracle" model). Its true AUC is estimated once on
   a reference sample of 1,000,000 subjects (Monte Carlo SE ~3e-4). On each of
   200 independent cohorts we compute the 95% stratified-bootstrap percentile
   CI (metrics.bootstrap_ci, 2000 replicates) and the DeLong CIs (plain and
   logit), and count how often each covers the true AUC. Scenarios: the full
   oracle and the ultrasound-only oracle at 300 subjects, and the full oracle
   at 81 subjects (the phyllodes study's size). Gate: bootstrap coverage
   >= 93% in the primary scenario (full oracle, 300 subjects).
2. Conformal rule-out. On each of 200 repetitions a calibration cohort (663
   subjects, the MPM-MU size) sets a rule-out threshold for target
   sensitivity 98% and 95% (conformal.rule_out_threshold, marginal and with
   delta = 0.1), and a fresh held-out cohort of 663 subjects measures it. The
   population sensitivity of each threshold is read off the reference sample.
   For comparison, the naive threshold "training sensitivity >= target"
   (metrics.sensitivity_threshold) on the same calibration cohort. Gates:
   mean held-out sensitivity >= 1 - alpha (marginal rule); share of
   repetitions with population sensitivity >= 1 - alpha at least 1 - delta
   (delta rule), within two binomial SEs of the repetition count.
3. Conformal sets (class-conditional, alpha = 0.1): empirical coverage and
   abstention on the held-out cohorts.

Prints the figures and writes bench/results/ci_coverage.json. The seed is
fixed; the binomial SE of a 95% coverage over 200 cohorts is 1.5 points.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ci_coverage.py [--cohorts 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from breastfusion.data.synthetic.latents import MODALITY_LATENTS, oracle_posterior, sample_latents
from breastfusion.evaluation.clinical_utility import biopsies_avoided
from breastfusion.evaluation.conformal import conformal_sets, empirical_coverage, rule_out_threshold
from breastfusion.evaluation.delong import delong_ci
from breastfusion.evaluation.metrics import bootstrap_ci, sensitivity_threshold

PREVALENCE = 279 / 663  # MPM-MU cohort
SEED = 20240601
N_REFERENCE = 1_000_000
N_BOOT = 2000
SCENARIOS = {  # name: (observed latents, subjects per cohort)
    "oracle_all_n300": (None, 300),
    "oracle_ultrasound_n300": (MODALITY_LATENTS["ultrasound"], 300),
    "oracle_all_n81": (None, 81),
}
PRIMARY = "oracle_all_n300"
N_CAL = N_TEST = 663
ALPHAS = (0.02, 0.05)
DELTA = 0.1
SET_ALPHA = 0.1


def _draw(n: int, rng: np.random.Generator, observed=None) -> tuple[np.ndarray, np.ndarray]:
    latents = sample_latents(n, prevalence=PREVALENCE, rng=rng)
    return latents["label"].to_numpy(), oracle_posterior(latents, prevalence=PREVALENCE, observed=observed)


def _reference(rng: np.random.Generator, n_reference: int = N_REFERENCE) -> dict:
    latents = sample_latents(n_reference, prevalence=PREVALENCE, rng=rng)
    y = latents["label"].to_numpy()
    out = {}
    for name, (observed, _) in SCENARIOS.items():
        key = "all" if observed is None else "ultrasound"
        if key not in out:
            p = oracle_posterior(latents, prevalence=PREVALENCE, observed=observed)
            ci = delong_ci(y, p)
            out[key] = {"auc": ci.auc, "mc_se": ci.se, "malignant_sorted": np.sort(p[y == 1])}
    return out


def auc_coverage(n_cohorts: int, rng: np.random.Generator, reference: dict) -> dict:
    results = {}
    for name, (observed, n) in SCENARIOS.items():
        truth = reference["all" if observed is None else "ultrasound"]["auc"]
        hits = {"bootstrap": [], "delong_plain": [], "delong_logit": []}
        widths = []
        for _ in range(n_cohorts):
            y, p = _draw(n, rng, observed)
            boot = bootstrap_ci(y, p, "auc", n_boot=N_BOOT, seed=int(rng.integers(2**31)))
            plain, logit_ci = delong_ci(y, p), delong_ci(y, p, transform="logit")
            hits["bootstrap"].append(boot.low <= truth <= boot.high)
            hits["delong_plain"].append(plain.low <= truth <= plain.high)
            hits["delong_logit"].append(logit_ci.low <= truth <= logit_ci.high)
            widths.append(boot.high - boot.low)
        results[name] = {"true_auc": truth, "subjects": n, "cohorts": n_cohorts,
                         "mean_bootstrap_width": float(np.mean(widths)),
                         **{f"coverage_{k}": float(np.mean(v)) for k, v in hits.items()}}
    return results


def _population_sensitivity(t: float, malignant_sorted: np.ndarray) -> float:
    return 1.0 - np.searchsorted(malignant_sorted, t, side="left") / malignant_sorted.size


def rule_out(n_reps: int, rng: np.random.Generator, reference: dict) -> dict:
    mal = reference["all"]["malignant_sorted"]
    rows = {a: {"marginal": [], "pac": [], "naive": []} for a in ALPHAS}
    sets_cov = []
    for _ in range(n_reps):
        y_cal, p_cal = _draw(N_CAL, rng)
        y_te, p_te = _draw(N_TEST, rng)
        for a in ALPHAS:
            rules = {"marginal": rule_out_threshold(p_cal, y_cal, alpha=a).threshold,
                     "pac": rule_out_threshold(p_cal, y_cal, alpha=a, delta=DELTA).threshold,
                     "naive": sensitivity_threshold(y_cal, p_cal, target=1 - a)}
            for kind, t in rules.items():
                b = biopsies_avoided(y_te, p_te, float(np.clip(t, 0, 1)))
                rows[a][kind].append((b["sensitivity"], _population_sensitivity(t, mal),
                                      b["benign_biopsies_avoided"], b["cancers_missed"]))
        sets_cov.append(empirical_coverage(conformal_sets(p_cal, y_cal, p_te, alpha=SET_ALPHA), y_te))
    out = {}
    for a, kinds in rows.items():
        for kind, vals in kinds.items():
            v = np.array(vals)
            out[f"sens{round(100 * (1 - a))}_{kind}"] = {
                "nominal_sensitivity": 1 - a,
                "mean_heldout_sensitivity": float(v[:, 0].mean()),
                "mean_population_sensitivity": float(v[:, 1].mean()),
                "share_population_sensitivity_ge_nominal": float(np.mean(v[:, 1] >= 1 - a)),
                "mean_benign_biopsies_avoided_per_100": float(v[:, 2].mean()),
                "mean_cancers_missed_per_100": float(v[:, 3].mean()),
            }
    out["sets_alpha0.1_class_conditional"] = {k: float(np.mean([c[k] for c in sets_cov])) for k in sets_cov[0]}
    return out


def run(n_cohorts: int = 200, *, n_reference: int = N_REFERENCE, seed: int = SEED) -> dict:
    """Run all three parts; returns the JSON-ready result with its ``checks``."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    reference = _reference(rng, n_reference)
    coverage = auc_coverage(n_cohorts, rng, reference)
    conformal = rule_out(n_cohorts, rng, reference)
    checks = {"bootstrap_coverage_primary": {
        "observed": coverage[PRIMARY]["coverage_bootstrap"], "required": 0.93,
        "passed": bool(coverage[PRIMARY]["coverage_bootstrap"] >= 0.93)}}
    for a in ALPHAS:
        tag = f"sens{round(100 * (1 - a))}"
        marginal = conformal[f"{tag}_marginal"]
        checks[f"{tag}_marginal_mean_heldout_sensitivity"] = {
            "observed": marginal["mean_heldout_sensitivity"], "required": 1 - a,
            "passed": bool(marginal["mean_heldout_sensitivity"] >= 1 - a)}
        # The delta rule promises P(sensitivity >= 1 - a) >= 1 - delta; over n_cohorts repetitions the
        # observed share has binomial noise, so it must not fall more than 2 binomial SEs below 1 - delta.
        share = conformal[f"{tag}_pac"]["share_population_sensitivity_ge_nominal"]
        floor = 1 - DELTA - 2 * np.sqrt(DELTA * (1 - DELTA) / n_cohorts)
        checks[f"{tag}_pac_share_population_sensitivity_ge_nominal"] = {
            "observed": share, "required": float(floor), "promised": 1 - DELTA, "passed": bool(share >= floor)}
    return {"seed": seed, "prevalence": PREVALENCE, "cohorts": n_cohorts, "n_boot": N_BOOT,
            "reference": {k: {"true_auc": v["auc"], "mc_se": v["mc_se"], "subjects": n_reference}
                          for k, v in reference.items()},
            "auc_ci_coverage": coverage, "conformal": conformal, "checks": checks,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ci_coverage.json")
    args = parser.parse_args()
    result = run(args.cohorts)
    coverage, conformal, checks = result["auc_ci_coverage"], result["conformal"], result["checks"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"true AUC (reference n={N_REFERENCE:,}): " + ", ".join(
        f"{k} {v['true_auc']:.4f} (MC SE {v['mc_se']:.1e})" for k, v in result["reference"].items()))
    print(f"\n95% CI coverage of the true AUC over {args.cohorts} cohorts")
    print(f"{'scenario':26s} {'boot':>6s} {'DeLong':>7s} {'logit':>6s} {'width':>6s}")
    for name, r in coverage.items():
        print(f"{name:26s} {r['coverage_bootstrap']:6.1%} {r['coverage_delong_plain']:7.1%} "
              f"{r['coverage_delong_logit']:6.1%} {r['mean_bootstrap_width']:6.3f}")
    print(f"\nrule-out thresholds: calibration n={N_CAL}, held-out n={N_TEST}, {args.cohorts} repetitions")
    print(f"{'rule':22s} {'held-out sens':>13s} {'pop. sens':>9s} {'P(pop>=nom)':>11s} "
          f"{'benign bx avoided/100':>21s} {'missed/100':>10s}")
    for name, r in conformal.items():
        if name.startswith("sens"):
            print(f"{name:22s} {r['mean_heldout_sensitivity']:13.4f} {r['mean_population_sensitivity']:9.4f} "
                  f"{r['share_population_sensitivity_ge_nominal']:11.1%} "
                  f"{r['mean_benign_biopsies_avoided_per_100']:21.1f} {r['mean_cancers_missed_per_100']:10.2f}")
    s = conformal["sets_alpha0.1_class_conditional"]
    print(f"\nconformal sets (alpha 0.1, class-conditional): coverage {s['coverage']:.3f}, malignant "
          f"{s['coverage_malignant']:.3f}, benign {s['coverage_benign']:.3f}, abstain {s['abstain_rate']:.3f}, "
          f"empty {s['empty_rate']:.3f}")
    print("\nchecks:")
    for k, v in checks.items():
        print(f"  {k}: observed {v['observed']:.4f}, required >= {v['required']:.4f} -> "
              f"{'PASS' if v['passed'] else 'FAIL'}")
    print(f"{result['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()

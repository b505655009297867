"""How long does a fitted model take to export, to predict new subjects, and to answer the web page?

Usage:
    python bench/predict_speed.py [--run DIR] [--new 300] [--seed 7]

Without ``--run`` it first runs the quick demo (``breastfusion demo --quick``) into a temporary folder. Then:

1. ``export_bundle`` of the run's reference variant (seconds, megabytes);
2. ``--new`` subjects drawn from the same synthetic generator with another seed, predicted by
   ``Bundle.predict`` (seconds, and the AUC with its bootstrap CI, sensitivity and specificity at the
   bundle's threshold: new subjects, never seen by any fold network);
3. one case (its images and clinical row) posted to the page (``POST /predict``, Score-CAM heatmaps and
   modality contributions) through FastAPI's test client, three times (seconds each);
4. per-case latency, PyTorch vs ONNX Runtime (the bundle exported with ``--onnx``), both on ``--threads``
   threads: p50 / p95 over ``--cases`` single-subject cohorts of ``Bundle.predict`` end to end (decode,
   preprocess, every fold network, scoring) and of the fold networks alone (the case's prepared tensors
   through all K networks), after 3 warm-up cases; and the largest probability difference between the two.

Prints and writes ``bench/results/predict_speed.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _quantiles(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "mean_ms": round(float(ms.mean()), 1), "n": len(ms)}


def _latency(bundle, cohort, *, cases: int, threads: int) -> dict:
    """Per-case latency of torch vs ONNX Runtime (see the module docstring, step 4)."""
    import numpy as np
    import torch

    from breastfusion.data.cache import ArrayCache
    from breastfusion.data.manifest import Cohort
    from breastfusion.data.tensors import LesionDataset, build_lesion_images, clinical_features_for
    from breastfusion.predict import fold_probs, onnx_fold_probs, fit_to_bundle

    torch.set_num_threads(threads)
    subjects = list(dict.fromkeys(cohort.manifest["subject_id"]))[:cases + 3]
    one = [Cohort(root=cohort.root, manifest=cohort.manifest[cohort.manifest["subject_id"] == s],
                  clinical=cohort.clinical[cohort.clinical["subject_id"] == s]) for s in subjects]
    record: dict = {"threads": threads, "cases": cases, "folds": bundle.n_folds, "tta": bundle.config.training.tta}
    diffs = []
    for runtime in ("torch", "onnx"):
        for k in range(bundle.n_folds):
            bundle._onnx_folds[(k, None)] = bundle.onnx_fold(k, threads=threads)
        end_to_end, networks = [], []
        for i, case in enumerate(one):
            started = time.perf_counter()
            bundle.predict(case, runtime=runtime)
            if i >= 3:
                end_to_end.append(time.perf_counter() - started)
            fitted = fit_to_bundle(bundle, case)
            lesions = fitted.lesions
            images = build_lesion_images(fitted, bundle.preprocessing, cache=ArrayCache(enabled=False))
            datasets = [LesionDataset(images, np.arange(len(lesions)), lesions["y"].to_numpy(), bundle.modalities,
                                      *(clinical_features_for(lesions, fitted.clinical, bundle.clinical_preprocessors[k])
                                        if bundle.clinical_preprocessors else (None, None)))
                        for k in range(bundle.n_folds)]
            started = time.perf_counter()
            with torch.no_grad():
                probs = [(fold_probs(bundle, k, net, datasets[k], 64) if runtime == "torch"
                          else onnx_fold_probs(bundle, k, datasets[k], 64)) for k, net in enumerate(bundle.networks)]
            if i >= 3:
                networks.append(time.perf_counter() - started)
            if runtime == "torch":
                diffs.append(np.concatenate(probs))
            else:
                diffs[i] = np.abs(diffs[i] - np.concatenate(probs)).max()
        record[runtime] = {"end_to_end": _quantiles(end_to_end), "networks_only": _quantiles(networks)}
    record["max_prob_difference"] = float(max(diffs))
    record["goal_p95_ms"] = 250
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run folder (default: run the quick demo)")
    parser.add_argument("--new", type=int, default=300, help="new synthetic subjects to predict")
    parser.add_argument("--seed", type=int, default=7, help="seed of the new subjects")
    parser.add_argument("--cases", type=int, default=40, help="single cases timed per runtime")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime")
    args = parser.parse_args()

    import pandas as pd
    import torch
    from fastapi.testclient import TestClient
    from sklearn.metrics import confusion_matrix

    from breastfusion.app import create_app
    from breastfusion.bundle import export_bundle, load_bundle
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.experiment.demo import run_demo
    from breastfusion.evaluation.metrics import auc_with_ci

    record: dict = {"what": __doc__.split("\n\n")[0], "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            started = time.perf_counter()
            run = tmp / "run"
            run_demo(run, quick=True)
            record["demo_quick_s"] = round(time.perf_counter() - started, 1)
        run = Path(run)
        synthetic = load_config(run / "config.yaml").synthetic

        started = time.perf_counter()
        bundle_dir = export_bundle(run, tmp / "model", onnx=True)
        record["export_s"] = round(time.perf_counter() - started, 2)
        record["bundle_mb"] = round(sum(f.stat().st_size for f in bundle_dir.iterdir()) / 2**20, 1)
        bundle = load_bundle(bundle_dir)
        record["variant"], record["cv_auc"] = bundle.variant, bundle.meta["metrics"]["auc"]

        new = tmp / "new"
        generate_cohort(new, n_subjects=args.new, seed=args.seed, image_px=synthetic.image_px,
                        prevalence=synthetic.prevalence)
        started = time.perf_counter()
        table = bundle.predict(new)
        record["predict_s"] = round(time.perf_counter() - started, 2)
        auc, ci = auc_with_ci(table["y"], table["prob"], n_boot=1000, seed=0)
        tn, fp, fn, tp = confusion_matrix(table["y"], (table["call"] == "malignant").astype(int)).ravel()
        record["new_subjects"] = {"n": len(table), "seed": args.seed, "auc": round(auc, 3),
                                  "auc_ci": [round(c, 3) for c in ci], "sensitivity": round(tp / (tp + fn), 3),
                                  "specificity": round(tn / (tn + fp), 3),
                                  "threshold": round(float(table["threshold"].median()), 3)}

        cohort = load_cohort(new)
        subject = cohort.manifest["subject_id"].iloc[0]
        rows = cohort.manifest[cohort.manifest["subject_id"] == subject]
        names = {("mammography", "CC"): "mammography_cc", ("mammography", "MLO"): "mammography_mlo"}
        files = [(names.get((r.modality, r.view), "ultrasound"), (Path(r.path).name, Path(r.path).read_bytes(),
                                                                   "image/png")) for r in rows.itertuples()]
        clinical = cohort.clinical.set_index("subject_id").loc[subject]
        binary = bundle.clinical_preprocessors[0].types_["binary"] if bundle.clinical_preprocessors else []
        form = {f"clinical__{c}": "" if pd.isna(v) else str(int(v) if c in binary else v) for c, v in clinical.items()}
        client = TestClient(create_app(bundle))
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            reply = client.post("/predict", files=files, data={**form, "method": "scorecam"})
            seconds.append(round(time.perf_counter() - started, 2))
            if reply.status_code != 200:
                raise SystemExit(f"the page answered {reply.status_code}: {reply.text[:300]}")
        record["page_scorecam_s"] = seconds
        record["page_images"] = len(files)
        record["latency"] = _latency(bundle, cohort, cases=args.cases, threads=args.threads)

    out = Path(__file__).parent / "results" / "predict_speed.json"
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

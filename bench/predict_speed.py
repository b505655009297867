"""How long does a fitted model take to export, to predict new subjects, and to answer the web page?

Usage:
    python bench/predict_speed.py [--run DIR] [--new 300] [--seed 7]

Without ``--run`` it first runs the quick demo (``breastfusion demo --quick``) into a temporary folder. Then:

1. ``export_bundle`` of the run's reference variant (seconds, megabytes);
2. ``--new`` subjects drawn from the same synthetic generator with another seed, predicted by
   ``Bundle.predict`` (seconds, and the AUC with its bootstrap CI, sensitivity and specificity at the
   bundle's threshold: new subjects, never seen by any fold network);
3. one case (its images and clinical row) posted to the page (``POST /predict``, Score-CAM heatmaps and
   modality contributions) through FastAPI's test client, three times (seconds each).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run folder (default: run the quick demo)")
    parser.add_argument("--new", type=int, default=300, help="new synthetic subjects to predict")
    parser.add_argument("--seed", type=int, default=7, help="seed of the new subjects")
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
    from breastfusion.demo import run_demo
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
        bundle_dir = export_bundle(run, tmp / "model")
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

    out = Path(__file__).parent / "results" / "predict_speed.json"
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

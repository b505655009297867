"""Does report.html render in headless Chromium (Debian's chromium package) with no broken image?

Usage:
    python bench/report_render.py [--run RUN_DIR] [--screenshot PNG] [--width 1280]

With ``--run`` it checks that run folder's ``report.html`` (e.g. one made by
``breastfusion demo --quick``). Without it, it builds a report from synthetic
out-of-fold predictions (no training: 300 subjects, two variants, 5 folds, 3
repeats, Platt recalibration) so that every section of the report is present.

Checks (breastfusion.report.render.check_report): every <img> is an embedded
PNG that PIL decodes; Chromium loads the page and reports each image's
naturalWidth (0 = broken) through --dump-dom; a full-page screenshot is not
blank. Prints the figures and writes bench/results/report_render.json. It
asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit


def _synthetic_predictions(n: int = 300, folds: int = 5, repeats: int = 3, seed: int = 0):
    """Lesion predictions shaped like predictions.csv / calibration_predictions.csv (training in-sample)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.42).astype(int)
    variants = {"ultrasound": 1.0, "fused": 1.6}
    test, calibration = [], []
    for repeat in range(repeats):
        fold = rng.permutation(np.arange(n) % folds)
        for name, separation in variants.items():
            for k in range(folds):
                for split, members in (("test", np.flatnonzero(fold == k)), ("training", np.flatnonzero(fold != k))):
                    z = separation * (2 * y[members] - 1) + rng.normal(size=members.size)
                    frame = pd.DataFrame({"variant": name, "repeat": repeat, "fold": k,
                                          "subject_id": [f"S{i:03d}" for i in members],
                                          "lesion_id": [f"S{i:03d}-L1" for i in members], "y": y[members],
                                          "prob": expit(2.0 * z + 0.5)})
                    (test if split == "test" else calibration).append(
                        frame if split == "test" else frame.assign(split=split))
    return pd.concat(test, ignore_index=True), pd.concat(calibration, ignore_index=True)


def _synthetic_run(out: Path) -> Path:
    from breastfusion.config import ExperimentConfig, dump_config
    from breastfusion.experiment.run import evaluate_predictions, library_versions, write_outputs

    config = ExperimentConfig(name="report-render-bench",
                              variants={"ultrasound": ["ultrasound"], "fused": ["mammography", "ultrasound"]},
                              cv={"n_splits": 5, "repeats": 3}, evaluation={"recalibration": "platt"})
    dump_config(config, out / "config.yaml")
    predictions, calibration = _synthetic_predictions()
    evaluation, scores, extra = evaluate_predictions(predictions, calibration, config)
    subjects = predictions[predictions["repeat"] == 0].groupby("subject_id")["y"].max()
    results = {"name": config.name, "created": "synthetic predictions", "versions": library_versions(),
               "manifest_sha256": None, "cv": config.cv.model_dump(), "runtime_s": None,
               "cohort": {"n_subjects": int(len(subjects)), "n_lesions": int(len(subjects)),
                          "n_malignant": int(subjects.sum()), "n_images": 2 * int(len(subjects)),
                          "modalities": ["mammography", "ultrasound"]},
               **evaluation}
    write_outputs(results, scores, out, extra)
    return out / "report.html"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a run folder (default: synthetic predictions)")
    parser.add_argument("--screenshot", type=Path, default=None, help="where to keep the screenshot")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "report_render.json")
    args = parser.parse_args()

    from breastfusion.report.render import check_report, find_chromium

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no chromium binary: apt-get install -y chromium")
    work = Path(tempfile.mkdtemp(prefix="report-render-"))
    started = time.perf_counter()
    report = args.run / "report.html" if args.run else _synthetic_run(work)
    build_s = time.perf_counter() - started
    screenshot = args.screenshot or work / "report.png"
    result = check_report(report, screenshot, width=args.width)
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    record = {"what": "report.html rendered by headless Chromium: full-page screenshot, images decoded by PIL and "
                      "by the browser (naturalWidth > 0)",
              "report": str(report), "source": "run folder" if args.run else "synthetic predictions (no training)",
              "report_bytes": report.stat().st_size, "build_s": None if args.run else round(build_s, 2),
              "chromium_version": version, "platform": platform.platform(), **result.as_dict()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"{record['source']}: {report}")
    print(f"  {version}; {result.n_images} images, broken: {result.bad_images or 'none'}; browser widths "
          f"{result.browser_widths}")
    print(f"  screenshot {result.screenshot_size[0]}x{result.screenshot_size[1]} px, non-white "
          f"{100 * result.non_white_fraction:.1f}%, pixel sd {result.pixel_std:.1f}, blank: {result.blank}; "
          f"{result.seconds:.1f} s in Chromium")
    print(f"  ok: {result.ok} · screenshot {screenshot} · wrote {args.out}")


if __name__ == "__main__":
    main()

"""How does the local web page hold up under 50 concurrent requests, good and abusive?

Usage:
    python bench/serve_load.py [--bundle DIR] [--requests 50] [--rounds 3] [--method none]

Without ``--bundle`` it first trains and exports a tiny bundle (a 40-subject synthetic cohort at 32 px,
timm's ``test_resnet``, 2 folds, 1 epoch: mammography + ultrasound + clinical). Then it serves the bundle
with uvicorn on 127.0.0.1 (a free port, this machine only) and, ``--rounds`` times, sends ``--requests``
requests at once from as many threads: one in five an abusive one (non-image bytes, a path-traversal
file name, an unparsable clinical value, a body over the upload limit), the rest a real case (its
images and clinical row) to ``POST /api/predict``. It records each request's latency, the status codes,
and whether the server still answered ``GET /api/model`` afterwards.

Prints and writes ``bench/results/serve_load.json`` (p50 / p95 / max latency of the good requests and of
all of them, per round and overall); asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "serve_load.json"
TINY_MODEL = {"mammography": {"encoder": "test_resnet", "encoder_kwargs": {}, "image_size": 32},
              "ultrasound": {"encoder": "test_resnet", "encoder_kwargs": {}, "image_size": 32}}
UPLOAD_LIMIT = 2 * 2**20


def tiny_bundle(folder: Path) -> Path:
    """Train and export the tiny fused bundle the benchmark serves when none is given."""
    from breastfusion.bundle import export_bundle
    from breastfusion.config import load_config
    from breastfusion.data.manifest import load_cohort
    from breastfusion.data.synthetic.cohort import generate_cohort
    from breastfusion.experiment.run import run_experiment

    cohort = folder / "cohort"
    generate_cohort(cohort, n_subjects=40, seed=5, image_px=32)
    config = load_config(None, name="serve-load", manifest=cohort,
                         variants={"fused": ["mammography", "ultrasound", "clinical"]}, model=TINY_MODEL,
                         training={"epochs": 1, "batch_size": 16}, cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(cohort), config, folder / "run")
    return export_bundle(folder / "run", folder / "bundle")


def _case(cohort_dir: Path) -> tuple[list, dict]:
    """The first subject's images as the page's file inputs and its clinical row as form fields."""
    import pandas as pd

    from breastfusion.data.manifest import load_cohort

    cohort = load_cohort(cohort_dir)
    subject = cohort.manifest["subject_id"].iloc[0]
    rows = cohort.manifest[cohort.manifest["subject_id"] == subject]
    names = {("mammography", "CC"): "mammography_cc", ("mammography", "MLO"): "mammography_mlo"}
    files = [(names.get((r.modality, r.view), "ultrasound"), (Path(r.path).name, Path(r.path).read_bytes(),
                                                               "application/octet-stream"))
             for r in rows.itertuples()]
    clinical = cohort.clinical.set_index("subject_id")
    form = {} if subject not in clinical.index else {
        f"clinical__{c}": "" if pd.isna(v) else str(v) for c, v in clinical.loc[subject].items()}
    return files, form


def _abusive(i: int, files: list) -> tuple[str, list, dict]:
    kind = ("not-image", "traversal", "bad-value", "too-big")[i % 4]
    if kind == "not-image":
        return kind, [("ultrasound", ("scan.png", b"not an image" * 20, "image/png"))], {}
    if kind == "traversal":
        field, (_, content, mime) = files[0]
        return kind, [(field, ("../../../../etc/evil.png", content, mime))], {}
    if kind == "bad-value":
        return kind, files, {"clinical__age": "old"}
    return kind, [("ultrasound", ("huge.png", b"x" * (UPLOAD_LIMIT + 1), "image/png"))], {}


def _percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {}
    return {"p50_s": round(float(np.percentile(values, 50)), 3), "p95_s": round(float(np.percentile(values, 95)), 3),
            "max_s": round(max(values), 3), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: train and export a tiny one)")
    parser.add_argument("--cohort", type=Path, help="cohort to take the posted case from (default: the tiny one)")
    parser.add_argument("--requests", type=int, default=50, help="concurrent requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="none", help="heatmap method of the good requests (none: predict only)")
    args = parser.parse_args()

    import httpx
    import torch
    import uvicorn

    from breastfusion.app import create_app
    from breastfusion.bundle import load_bundle

    record: dict = {"what": __doc__.split("\n\n")[0], "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                    "requests_per_round": args.requests, "n_rounds": args.rounds, "method": args.method,
                    "upload_limit_bytes": UPLOAD_LIMIT}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.bundle is None:
            started = time.perf_counter()
            bundle_dir, cohort_dir = tiny_bundle(tmp), tmp / "cohort"
            record["tiny_bundle_s"] = round(time.perf_counter() - started, 1)
        else:
            bundle_dir, cohort_dir = args.bundle, args.cohort
        files, form = _case(cohort_dir)
        app = create_app(load_bundle(bundle_dir), max_upload_bytes=UPLOAD_LIMIT)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               limit_concurrency=4 * args.requests))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"

        def one(i: int) -> dict:
            kind, f, d = ("good", files, {**form, "method": args.method}) if i % 5 else _abusive(i // 5, files)
            started = time.perf_counter()
            try:
                with httpx.Client(base_url=url, timeout=600) as client:
                    status = client.post("/api/predict", files=f, data=d).status_code
            except httpx.HTTPError as exc:
                status = f"{type(exc).__name__}"
            return {"kind": kind, "status": status, "s": time.perf_counter() - started}

        rounds, everything = [], []
        for r in range(args.rounds):
            started = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - started
            alive = httpx.get(f"{url}/api/model", timeout=60).status_code
            statuses: dict = {}
            for res in results:
                key = f"{res['kind']}:{res['status']}"
                statuses[key] = statuses.get(key, 0) + 1
            rounds.append({"round": r, "wall_s": round(wall, 2), "alive_after": alive == 200, "statuses": statuses,
                           "good": _percentiles([x["s"] for x in results if x["kind"] == "good"]),
                           "all": _percentiles([x["s"] for x in results])})
            everything += results
            print(f"round {r}: {args.requests} requests in {wall:.1f} s; good p50 {rounds[-1]['good']['p50_s']} s, "
                  f"p95 {rounds[-1]['good']['p95_s']} s; statuses {statuses}; alive after: {alive == 200}")
        server.should_exit = True
        thread.join(timeout=30)
        leftovers = sorted(p.name for p in Path(tempfile.gettempdir()).glob("breastfusion-case-*"))
    record.update(rounds=rounds, good=_percentiles([x["s"] for x in everything if x["kind"] == "good"]),
                  all=_percentiles([x["s"] for x in everything]), case_folders_left=leftovers)
    print(f"overall: good requests p50 {record['good']['p50_s']} s, p95 {record['good']['p95_s']} s "
          f"(n={record['good']['n']}); all p50 {record['all']['p50_s']} s, p95 {record['all']['p95_s']} s; "
          f"case folders left: {len(leftovers)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""What one heatmap costs: seconds per image for each CAM method on one network (or a seed ensemble) of an encoder.

Score-CAM runs the image branch once per channel of its target layer (batched), Grad-CAM and Grad-CAM++ once
forward and once backward, so the methods differ by orders of magnitude on wide final layers (EfficientNet-Lite0's
has 1280 channels). The network is untrained (its cost does not depend on its weights) and sees one random image.
A bundle explains a case with every fold network (and every seed of each), so a case costs about
images x folds x seeds x the per-network figure. Prints and writes ``bench/results/cam_cost.json``.

Usage:
    python bench/cam_cost.py [--encoder efficientnet_lite0] [--size 128] [--seeds 1 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = Path(__file__).resolve().parent / "results" / "cam_cost.json"


def cam_seconds(encoder: str, size: int, seeds: int, methods: tuple[str, ...]) -> dict[str, float]:
    """Seconds of :func:`~breastfusion.explain.cams.compute_cams` per method on one random ultrasound image."""
    import torch

    from breastfusion.config import load_config
    from breastfusion.explain.cams import compute_cams, image_model
    from breastfusion.models.network import build_network

    torch.manual_seed(0)
    model = load_config(None, model={"ultrasound": {"encoder": encoder, "image_size": size}}).model
    net = build_network(("ultrasound",), model, 0, seeds=seeds).eval()
    lesion = {"ultrasound": torch.randn(1, 1, 1, size, size), "ultrasound_views": torch.ones(1, 1, dtype=torch.bool)}
    explained = image_model(net, lesion, "ultrasound", 0)
    out = {}
    for method in methods:
        start = time.perf_counter()
        compute_cams(explained, (method,), target_class=1)
        out[method] = round(time.perf_counter() - start, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "scorecam"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = {f"seeds={k}": cam_seconds(args.encoder, args.size, k, tuple(args.methods)) for k in args.seeds}
    result = {"encoder": args.encoder, "image_size": args.size, "threads": args.threads,
              "seconds_per_image": rows, "load_average": os.getloadavg(),
              "machine": platform.processor() or platform.machine(),
              "command": " ".join(["python bench/cam_cost.py", *sys.argv[1:]])}
    print(json.dumps(result, indent=2))
    OUT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Training-step speed with the weights in channels-last memory vs the usual layout, measured in one run.

``fit_predict`` trains with the network's 4-D weights held channels-last (``training.fit.channels_last``), because
oneDNN's (CPU) and cuDNN's (GPU) convolutions are faster on that layout. This measures by how much, per encoder
and image size: images per second of forward + BCE loss + backward + AdamW step on a fixed normalised batch, the
two layouts alternating over rounds (the machine is shared, so the median ratio of each round's pair is reported,
not absolute speeds). Nothing timed is asserted anywhere.

Usage:
    python bench/channels_last.py                       # Lite0 / Lite2 / resnet18_half at 128 px, 1 thread
    python bench/channels_last.py --threads 2 --rounds 5 --models efficientnet_lite0:224
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from breastfusion.config import ModelConfig
from breastfusion.models.network import build_network

MODALITY = "ultrasound"


def images_per_second(net: torch.nn.Module, size: int, *, batch: int, steps: int, channels_last: bool) -> float:
    """Training steps per second × batch on random images, after one untimed warm-up step."""
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    inputs = {MODALITY: torch.randn(batch, 1, 1, size, size),
              f"{MODALITY}_views": torch.ones(batch, 1, dtype=torch.bool)}
    labels = torch.randint(0, 2, (batch,)).float()
    start = 0.0
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(inputs).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0:128", "efficientnet_lite2:128",
                                                        "resnet18_half:128"], help="ENCODER:SIZE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "channels_last.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    results = {}
    for spec in args.models:
        encoder, size = spec.rsplit(":", 1)
        net = build_network((MODALITY,), ModelConfig.model_validate({MODALITY: {"encoder": encoder}}), 0).train()
        rates: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for layout in (False, True) if r % 2 == 0 else (True, False):  # alternate which goes first
                rates[layout].append(images_per_second(net, int(size), batch=args.batch, steps=args.steps,
                                                       channels_last=layout))
        ratios = [cl / usual for cl, usual in zip(rates[True], rates[False])]
        row = results[spec] = {"contiguous_images_per_s": statistics.median(rates[False]),
                               "channels_last_images_per_s": statistics.median(rates[True]),
                               "speedup_median": statistics.median(ratios), "speedup_per_round": ratios}
        print(f"{spec:>24}: contiguous {row['contiguous_images_per_s']:6.1f} img/s, channels-last "
              f"{row['channels_last_images_per_s']:6.1f} img/s, speed-up x{row['speedup_median']:.2f} "
              f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})", flush=True)
    command = "python bench/channels_last.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {"command": command, "threads": args.threads, "batch": args.batch, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()

"""Training throughput: the real training step vs the pure compute ceiling, measured in one run.

For each encoder, in several alternating rounds (the machine is shared and noisy,
so medians over rounds are reported), images per second of:

* ``ceiling``: the same network (built by ``build_network``, one ultrasound branch),
  batch and size on a normalised float batch already in memory: forward, BCE loss,
  backward, AdamW step. The most any data path could reach.
* ``prepare``: the same, from a uint8 batch in memory through ``LesionClassifier._prepare``
  (uint8 → float, augmentation: flips, affine resample, gain, speckle).
* ``loader``: the same, batches drawn by hand from a ``DataLoader`` over a ``LesionDataset``
  (dict samples collated by the default collate function) with the training sampler.
* ``lightning``: the real thing: ``LesionClassifier`` under a Lightning ``Trainer`` set up as
  ``training/fit.py`` does (EpochSampler, drop_last, deterministic, no logger), timed from
  batch end to batch end across an epoch boundary, so data loading and every hook count.
* ``lightning_ckpt``: the same plus a full checkpoint after every epoch (``fit_predict`` with a
  ``work_dir`` does this for resuming); reported separately since its share depends on epoch length.

``ratio`` = lightning / ceiling (target ≥ 0.9). The images come from a synthetic cohort
through ``build_lesion_images`` (the warm, in-memory path training uses). Nothing timed is asserted.

Usage:
    python bench/train_throughput.py                     # resnet18 + convnext_atto, 128 px, batch 16, 2 threads
    python bench/train_throughput.py --rounds 3 --models resnet18_slim
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from breastfusion.config import ModelConfig
from breastfusion.data.manifest import load_cohort
from breastfusion.data.preprocess import params_for
from breastfusion.data.synthetic.cohort import generate_cohort
from breastfusion.data.tensors import LesionDataset, build_lesion_images
from breastfusion.models.network import build_network
from breastfusion.training.module import LesionClassifier
from breastfusion.training.sampling import EpochSampler

for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*weights_only.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*validation_step.*")

MODALITY = "ultrasound"  # one view per lesion: a batch of 16 lesions is 16 images
LR, WEIGHT_DECAY = 3e-3, 1e-4


def _dataset(n_lesions: int, size: int, root: Path) -> LesionDataset:
    generate_cohort(root, n_subjects=n_lesions, seed=0, image_px=size, masks=False)
    cohort = load_cohort(root)
    images = build_lesion_images(cohort, {MODALITY: params_for(MODALITY, size=size)}, cache=None)
    labels = cohort.lesions["y"].to_numpy()
    return LesionDataset(images, np.arange(len(labels)), labels, (MODALITY,))


def _net(encoder: str) -> torch.nn.Module:
    branch = {"encoder": encoder, "encoder_kwargs": {}}
    return build_network((MODALITY,), ModelConfig.model_validate({MODALITY: branch}), 0).train()


def _module(net: torch.nn.Module, epochs: int) -> LesionClassifier:
    return LesionClassifier(net, lr=LR, weight_decay=WEIGHT_DECAY, epochs=epochs, augment=True, seed=0)


def _step_by_hand(module: LesionClassifier, optimizer: torch.optim.Optimizer, batch: dict, *, prepare: bool) -> None:
    inputs = module._prepare(batch, train=True) if prepare else batch
    loss = module.loss(module.net(inputs).float(), batch["label"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rate(stamps: list[tuple[float, float]], batch: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process) between the first and last stamp."""
    images = (len(stamps) - 1) * batch
    return images / (stamps[-1][0] - stamps[0][0]), images / (stamps[-1][1] - stamps[0][1])


def run_by_hand(net0, dataset: LesionDataset, kind: str, *, batch: int, steps: int,
                skip: int) -> tuple[float, float]:
    """Images per wall / CPU second of ``steps`` training steps by hand (``ceiling``, ``prepare`` or ``loader``)."""
    module = _module(copy.deepcopy(net0), epochs=1).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    raw = next(iter(DataLoader(dataset, batch_size=batch)))
    fixed = module._prepare(raw, train=False) if kind == "ceiling" else raw
    fixed = {k: v.clone() for k, v in fixed.items()}
    if kind == "ceiling":  # random normalised images, already in memory
        fixed[MODALITY] = torch.randn_like(fixed[MODALITY])
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(dataset.tensors["label"].numpy(), seed=0),
                        drop_last=True)

    def batches():
        while True:
            yield from loader

    source = batches() if kind == "loader" else None
    stamps = []
    for i in range(steps + skip):
        _step_by_hand(module, optimizer, next(source) if source else fixed, prepare=kind != "ceiling")
        if i >= skip - 1:
            stamps.append(_stamp())
    return _rate(stamps, batch)


class _Stamps(L.Callback):
    def __init__(self):
        self.stamps: list[tuple[float, float]] = []
        self.threads = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(_stamp())
        self.threads = torch.get_num_threads()


class _SaveLast(L.Callback):  # what fit_predict adds when it has a work_dir (resumable folds)
    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)


def run_lightning(net0, dataset: LesionDataset, *, batch: int, epochs: int, skip: int,
                  checkpoint: bool) -> tuple[tuple[float, float], int]:
    """Images per wall / CPU second of Trainer.fit as training/fit.py runs it (batch end to batch end), threads."""
    module = _module(copy.deepcopy(net0), epochs=epochs)
    sampler = EpochSampler(dataset.tensors["label"].numpy(), seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=len(dataset) > batch)
    stamps = _Stamps()
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as scratch:
        callbacks: list[L.Callback] = [stamps] + ([_SaveLast(Path(scratch) / "last.ckpt")] if checkpoint else [])
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, precision="32-true", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            deterministic=True, num_sanity_val_steps=0, callbacks=callbacks,
                            default_root_dir=scratch)
        trainer.fit(module, loader)
    return _rate(stamps.stamps[skip - 1:], batch), stamps.threads


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "convnext_atto"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lesions", type=int, default=160, help="lesions in the dataset (one epoch)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per Lightning measurement")
    parser.add_argument("--skip", type=int, default=3, help="warm-up steps left out of each measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as Lightning's deterministic=True, for every variant alike
    L.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        t0 = time.perf_counter()
        dataset = _dataset(args.lesions, args.size, Path(tmp))
        print(f"dataset: {len(dataset)} lesions at {args.size} px in {time.perf_counter() - t0:.1f} s; "
              f"torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}", flush=True)
        steps_per_epoch = len(dataset) // args.batch
        steps = steps_per_epoch * args.epochs - args.skip  # the same number of timed steps everywhere
        results = {}
        for name in args.models:
            net0 = _net(name)
            kinds = ("ceiling", "prepare", "loader", "lightning", "lightning_ckpt")
            rates: dict[str, dict[str, list[float]]] = {c: {k: [] for k in kinds} for c in ("wall", "cpu")}
            threads = 0
            # Round 0 warms every path (oneDNN primitives, allocator) and is not reported.
            for r in range(args.rounds + 1):
                row = {}
                for kind in kinds if r % 2 else reversed(kinds):  # alternate the order between rounds
                    if kind.startswith("lightning"):
                        row[kind], threads = run_lightning(net0, dataset, batch=args.batch, epochs=args.epochs,
                                                           skip=args.skip, checkpoint=kind == "lightning_ckpt")
                    else:
                        row[kind] = run_by_hand(net0, dataset, kind, batch=args.batch, steps=steps, skip=args.skip)
                if r:
                    for kind in kinds:
                        rates["wall"][kind].append(row[kind][0])
                        rates["cpu"][kind].append(row[kind][1])
                print(f"{name} round {r}{' (warm-up)' if not r else ''}, img/s (img per CPU-s): "
                      + ", ".join(f"{k} {w:.1f} ({c:.1f})" for k, (w, c) in row.items()), flush=True)
            med = {c: {k: statistics.median(v) for k, v in per.items()} for c, per in rates.items()}
            wall, cpu = med["wall"], med["cpu"]
            results[name] = {
                "ratio": wall["lightning"] / wall["ceiling"],
                "train_images_per_s": wall["lightning"],
                "ceiling_images_per_s": wall["ceiling"],
                # CPU seconds of this process per image: robust to other processes taking the cores.
                "ratio_cpu_time": cpu["lightning"] / cpu["ceiling"],
                "ratio_with_epoch_checkpoint": wall["lightning_ckpt"] / wall["ceiling"],
                "ratio_per_round": [a / b for a, b in zip(rates["wall"]["lightning"], rates["wall"]["ceiling"])],
                "breakdown_vs_ceiling": {k: {"wall": wall[k] / wall["ceiling"], "cpu": cpu[k] / cpu["ceiling"]}
                                         for k in kinds},
                "images_per_s_median": wall,
                "images_per_cpu_s_median": cpu,
                "images_per_s_rounds": rates["wall"],
                "images_per_cpu_s_rounds": rates["cpu"],
                "batch": args.batch,
                "size": args.size,
                "in_chans": 1,
                "torch_threads": threads,
                "steps_per_measurement": steps,
                "params": sum(p.numel() for p in net0.parameters()),
            }
            b = results[name]["breakdown_vs_ceiling"]
            print(f"{name}: train step {wall['lightning']:.1f} img/s vs ceiling {wall['ceiling']:.1f} img/s "
                  f"→ ratio {results[name]['ratio']:.3f} (CPU time {results[name]['ratio_cpu_time']:.3f}); "
                  "wall / cpu vs ceiling: " + ", ".join(f"{k} {v['wall']:.3f}/{v['cpu']:.3f}" for k, v in b.items()),
                  flush=True)
    out = {
        "models": results,
        "rounds": args.rounds,
        "lesions_per_epoch": len(dataset),
        "epochs_per_lightning_run": args.epochs,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()

"""How well the in-fold lesion localiser finds BUSI lesions, and what its boxes are worth to a plain classifier.

On grouped BUSI with bus_clinical's 5 folds, each fold's localiser (breastfusion.models.localiser) is fitted on
the fold's training images and their masks only, then boxes the held-out images. Reported:

* the IoU of each held-out predicted box with the reader's mask box (median, share >= 0.5);
* the plain script's ResNet-18 (bench/plain_baselines.py) trained on reader-mask crops and tested on
  (a) reader-mask crops, (b) predicted-box crops, both with the ROI config's margin: (b) is what a whole-frame
  user gets, (a) the ceiling.

    python bench/localiser_quality.py --data ../shared/data --work /tmp/bf/real
    python bench/localiser_quality.py --dataset breast_lesions_usg --cv-seed 1 --no-plain --name NAME [--size 128]
    python bench/localiser_quality.py --dataset busi --fit-on breast_lesions_usg --augment affine --no-plain \
        --name NAME

The second form measures localiser settings on the BrEaST-Lesions selection folds (never reported), where
they are chosen. The third fits one localiser on every image and mask of another cohort (``--fit-on``) and boxes
every image of ``--dataset`` with it: how well a cohort without masks could be localised with a localiser borrowed
from one that has them (no fold of the boxed cohort is involved; its masks only score the boxes). Adds its run to
bench/results/localiser_quality.json under NAME (default: the dataset).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from real_data import auc_entry, first_rows, image_paths, lesion_masks, prepare, same_folds  # noqa: E402


def crops(paths: list[str], boxes: list[tuple[int, int, int, int]], size: int, margin: float) -> torch.Tensor:
    """Each image cropped to its box widened by ``margin`` a side (the toolkit's roi_box), squashed to ``size``."""
    from breastfusion.data.preprocess import roi_box

    arrays = []
    for path, box in zip(paths, boxes, strict=True):
        image = Image.open(path).convert("L")
        top, left, bottom, right = roi_box((image.height, image.width), box=box, margin=margin)
        arrays.append(np.asarray(image.crop((left, top, right, bottom)).resize((size, size), Image.BILINEAR),
                                 dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(arrays))[:, None]


def localiser_inputs(paths: list[str], masks: list[list[str]], params) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Each image as the localiser sees it (whole frame at ``params``' size), its mask aligned to that frame
    (uint8), the frame's crop box on the image and the reader's mask box on the image."""
    from breastfusion.data.cache import read_mask
    from breastfusion.data.preprocess import align_mask, preprocess
    from breastfusion.data.readers import read_image

    frames, frame_masks, crop_boxes, truth = [], [], [], []
    for path, mask_files in zip(paths, masks, strict=True):
        image, mask = read_image(path), read_mask(mask_files)
        prepared = preprocess(image, params)
        frames.append(prepared.pixels)
        frame_masks.append(np.rint(align_mask(mask, prepared, params) * 255).astype(np.uint8))
        crop_boxes.append(prepared.crop)
        rows, cols = np.nonzero(mask)
        truth.append((int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1))
    return np.stack(frames), np.stack(frame_masks), crop_boxes, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bf/real"))
    parser.add_argument("--epochs", type=int, default=30, help="localiser epochs")
    parser.add_argument("--size", type=int, default=96, help="localiser input size")
    parser.add_argument("--encoder", default="mobilenetv3_small_100")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--augment", default="flip", choices=["flip", "affine"])
    parser.add_argument("--dataset", default="busi", choices=["busi", "breast_lesions_usg"])
    parser.add_argument("--cv-seed", type=int, default=None, help="fold seed (default: the config's)")
    parser.add_argument("--no-plain", action="store_true", help="box IoU only, no plain classifier")
    parser.add_argument("--fit-on", default=None, choices=["busi", "breast_lesions_usg"],
                        help="fit one localiser on every image of this other cohort instead of one per fold")
    parser.add_argument("--name", default=None, help="key of this run in the JSON (default: the dataset)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "localiser_quality.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from breastfusion.config import LocaliserConfig, load_config
    from breastfusion.data.preprocess import params_for
    from breastfusion.models.localiser import (box_from_probs, box_iou, fit_localiser,
                                               frame_box_to_image, predict_lesion_probs)
    from plain_baselines import plain_cnn_probs_on

    config = load_config(ROOT / "configs" / "bus_clinical_roi.yaml")
    margin = float(config.model.ultrasound.preprocess["roi_margin"])
    if args.cv_seed is not None:
        config = config.model_copy(update={"cv": config.cv.model_copy(update={"seed": args.cv_seed})})
    cohort = prepare(args.dataset, args.data, args.work, group_duplicates=args.dataset == "busi")
    folds = same_folds(cohort, config)
    y = cohort.lesions["y"].to_numpy()
    paths, masks = image_paths(cohort), lesion_masks(cohort)
    assert len(first_rows(cohort)) == len(y)
    settings = LocaliserConfig(encoder=args.encoder, image_size=args.size, epochs=args.epochs, lr=args.lr,
                               augment=args.augment)
    params = params_for("ultrasound", size=args.size)

    start = time.perf_counter()
    frames, frame_masks, crop_boxes, truth = localiser_inputs(paths, masks, params)
    prepare_seconds = time.perf_counter() - start

    def report(e: int, n: int, loss: float, label: str) -> None:
        if e % 10 == 0:
            print(f"{label} epoch {e}/{n} loss {loss:.3f}", flush=True)

    predicted: list = [None] * len(y)
    start = time.perf_counter()
    if args.fit_on:  # one localiser from another cohort's images and masks boxes every image of this one
        source = prepare(args.fit_on, args.data, args.work, group_duplicates=args.fit_on == "busi")
        source_frames, source_masks, _, _ = localiser_inputs(image_paths(source), lesion_masks(source), params)
        fitted = [(fit_localiser(source_frames, source_masks, settings, seed=0,
                                 on_epoch=lambda e, n, loss: report(e, n, loss, args.fit_on)), np.arange(len(y)))]
    else:  # each fold's localiser, fitted when its turn comes, boxes that fold's held-out images
        fitted = ((fit_localiser(frames[train], frame_masks[train], settings, seed=k,
                                 on_epoch=lambda e, n, loss, k=k: report(e, n, loss, f"fold {k}")), test)
                  for k, (train, test) in enumerate(folds))
    for model, test in fitted:
        probs = predict_lesion_probs(model, frames[test])
        for i, p in zip(test, probs):
            predicted[i] = frame_box_to_image(box_from_probs(p, settings.threshold), crop_boxes[i], args.size)
    localiser_seconds = time.perf_counter() - start
    ious = np.array([box_iou(p, t) for p, t in zip(predicted, truth)])
    print(f"IoU median {np.median(ious):.3f}, >=0.5: {np.mean(ious >= 0.5):.3f}", flush=True)

    out = {
        "dataset": args.dataset, "cv_seed": None if args.fit_on else config.cv.seed,
        "localiser_fitted_on": args.fit_on or "each fold's training images",
        "localiser": {"encoder": settings.encoder, "image_size": settings.image_size, "epochs": settings.epochs,
                      "lr": settings.lr, "augment": settings.augment},
        "box_iou_median": float(np.median(ious)), "box_iou_ge_0_5": float(np.mean(ious >= 0.5)),
        "box_iou_by_class": {"benign": float(np.median(ious[y == 0])), "malignant": float(np.median(ious[y == 1]))},
        "margin": margin, "n_lesions": int(len(y)),
        "seconds": {"prepare": prepare_seconds, "localisers": localiser_seconds},
    }
    if not args.no_plain:
        truth_crops, predicted_crops = crops(paths, truth, 128, margin), crops(paths, predicted, 128, margin)
        start = time.perf_counter()
        # One network per fold, trained on reader-mask crops, tests each held-out lesion on both crops.
        probs = plain_cnn_probs_on(truth_crops, y, folds, {"reader": truth_crops, "predicted": predicted_crops},
                                   arch="resnet18", epochs=20)
        out.update(plain_reader_crops=auc_entry(y, probs["reader"]),
                   plain_predicted_crops=auc_entry(y, probs["predicted"]))
        out["seconds"]["plain"] = time.perf_counter() - start
    print(json.dumps(out, indent=2))
    runs = json.loads(args.out.read_text()) if args.out.is_file() else {}
    runs[args.name or args.dataset] = out
    args.out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()

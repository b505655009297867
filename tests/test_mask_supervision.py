"""Mask supervision (``model.{modality}.mask_loss``): lesion masks aligned with their images, moved with them by
augmentation, learned by a 1 x 1 head on the encoder's feature map, and never read for held-out lesions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from breastfusion.config import load_config
from breastfusion.data.cache import ArrayCache, load_lesion_mask
from breastfusion.data.manifest import load_cohort
from breastfusion.data.preprocess import PreprocessError, UltrasoundParams, preprocess
from breastfusion.data.readers import read_image
from breastfusion.data.tensors import LesionDataset, build_lesion_images
from breastfusion.data.transforms import augment_images, augment_with_masks, prepare_batch
from breastfusion.models.network import build_network
from breastfusion.training.module import LesionClassifier, mask_loss

from .conftest import TINY_MODEL, TINY_TRAINING


def _scan_with_lesion(tmp_path):
    """A 200 x 300 ultrasound-like PNG: black margins around a grey scan area holding a bright lesion, and its
    mask."""
    image = np.zeros((200, 300), np.uint8)
    image[20:180, 40:280] = 150  # the scan area: preprocessing crops to it
    mask = np.zeros_like(image)
    mask[60:100, 150:230] = 255
    image[mask > 0] = 230
    Image.fromarray(image).save(tmp_path / "scan.png")
    Image.fromarray(mask).save(tmp_path / "scan_mask.png")
    return tmp_path / "scan.png", tmp_path / "scan_mask.png"


def test_an_aligned_mask_lies_over_the_lesion_the_network_sees(tmp_path):
    path, mask_path = _scan_with_lesion(tmp_path)
    params = UltrasoundParams(size=64, suppress_overlays=False)
    pixels = preprocess(read_image(path), params).pixels
    aligned = load_lesion_mask(path, params, [mask_path]) / 255.0
    lesion = pixels > 127  # the lesion after cropping, normalising and resizing
    inside = aligned > 0.5
    iou = (lesion & inside).sum() / (lesion | inside).sum()
    assert aligned.shape == (64, 64) and iou > 0.85
    # The crop to the scan area moved it: the uncropped mask, merely resized, would lie elsewhere.
    naive = np.asarray(Image.open(mask_path).resize((64, 43))) > 127
    assert (np.pad(naive, ((10, 11), (0, 0))) & inside).sum() < 0.8 * inside.sum()


def test_lesion_masks_are_cached_and_a_mask_of_another_size_is_named(tmp_path):
    path, mask_path = _scan_with_lesion(tmp_path)
    params = UltrasoundParams(size=32)
    cache = ArrayCache(tmp_path / "cache")
    first = load_lesion_mask(path, params, [mask_path], cache=cache)
    again = load_lesion_mask(path, params, [mask_path], cache=cache)
    assert cache.hits == 1 and cache.misses == 1
    np.testing.assert_array_equal(first, again)
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "small_mask.png")
    with pytest.raises(PreprocessError, match=r"small_mask\.png.*100x100 px, the image 200x300"):
        load_lesion_mask(path, params, [tmp_path / "small_mask.png"])


def test_augmentation_moves_masks_with_their_images_and_draws_the_same_randomness():
    torch.manual_seed(0)
    masks = torch.zeros(6, 1, 1, 48, 48)
    masks[:, :, :, 10:30, 5:20] = 1.0  # off-centre, so a flip or a shift shows
    images = masks.clone()
    torch.manual_seed(1)
    moved_images, moved_masks = augment_with_masks(images, masks, modality="ultrasound")
    torch.manual_seed(1)
    alone = augment_images(images, modality="ultrasound")
    torch.testing.assert_close(moved_images, alone)  # a mask changes nothing about its image's augmentation
    a, b = moved_images > 0.5, moved_masks > 0.5
    iou = (a & b).sum() / (a | b).sum()
    assert iou > 0.9
    assert not torch.equal(moved_masks, masks)  # they did move
    assert 0.0 <= float(moved_masks.min()) and float(moved_masks.max()) <= 1.0  # no gain or speckle on masks


def test_mask_loss_counts_only_slots_with_an_image_and_a_mask():
    logits = torch.tensor([[[[2.0, -2.0], [0.0, 0.0]]], [[[5.0, 5.0], [5.0, 5.0]]]])  # (B=2, V=1, 2, 2)
    masks = torch.zeros(2, 1, 1, 4, 4)
    masks[0, 0, 0, :2, :2] = 1.0  # top-left cell fully inside
    masks[0, 0, 0, :2, 2:] = 0.5  # top-right cell half inside
    batch = {"ultrasound_mask": masks, "ultrasound_views": torch.tensor([[True], [True]]),
             "ultrasound_mask_views": torch.tensor([[True], [False]])}  # the second lesion has no mask
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -2.0, 0.0, 0.0]), torch.tensor([1.0, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(mask_loss(logits, batch, "ultrasound"), expected)
    batch["ultrasound_mask_views"] = torch.tensor([[False], [False]])
    assert float(mask_loss(logits, batch, "ultrasound")) == 0.0


def _model(mask_loss_weight: float):
    return load_config(None, model={**TINY_MODEL, "ultrasound": {**TINY_MODEL["ultrasound"],
                                                                 "mask_loss": mask_loss_weight}}).model


def test_the_training_loss_adds_the_weighted_mask_loss_and_trains_the_head():
    torch.manual_seed(0)
    net = build_network(("ultrasound",), _model(0.5), 0)
    head = net.branches["ultrasound"].mask_head
    assert head is not None and build_network(("ultrasound",), _model(0.0), 0).branches["ultrasound"].mask_head is None
    masks = torch.zeros(4, 1, 1, 32, 32, dtype=torch.uint8)
    masks[:, :, :, 8:20, 8:20] = 255
    batch = {"ultrasound": torch.randint(0, 255, (4, 1, 1, 32, 32), dtype=torch.uint8),
             "ultrasound_views": torch.ones(4, 1, dtype=torch.bool), "ultrasound_mask": masks,
             "ultrasound_mask_views": torch.ones(4, 1, dtype=torch.bool), "label": torch.tensor([0.0, 1.0, 0.0, 1.0])}
    module = LesionClassifier(net, lr=1e-3, weight_decay=0.0, epochs=1, augment=False)
    net.eval()  # no dropout, so the step and the hand-made sum see the same network
    loss = module.training_step(batch, 0)
    prepared = prepare_batch(batch)
    logits, maps = net.forward_with_mask_logits(prepared)
    expected = module.loss(logits, batch["label"]) + 0.5 * mask_loss(maps["ultrasound"], prepared, "ultrasound")
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert head.weight.grad is not None and float(head.weight.grad.abs().sum()) > 0
    # Without masks in the batch (held-out lesions) the loss is the classification loss alone.
    plain = {k: v for k, v in batch.items() if "mask" not in k}
    torch.testing.assert_close(module.training_step(plain, 0), module.loss(net(prepare_batch(plain)), plain["label"]))


def test_only_training_lesions_carry_masks_and_a_mask_supervised_run_trains(small_cohort_dir, tmp_path):
    from breastfusion.experiment.crossval import FoldTrainer, fold_positions
    from breastfusion.experiment.run import run_experiment

    cohort = load_cohort(small_cohort_dir)
    config = load_config(None, variants={"us": ["ultrasound"]}, model=_model(1.0).model_dump(),
                         training=TINY_TRAINING, cv={"n_splits": 2, "bootstrap": 100}, cache=False)
    images = build_lesion_images(cohort, {"ultrasound": UltrasoundParams(size=32)}, masks_for=("ultrasound",))
    with_files = cohort.manifest[(cohort.manifest["modality"] == "ultrasound") & cohort.manifest["mask_path"].notna()]
    assert int(images.mask_views["ultrasound"].sum()) == len(with_files) > 0
    assert not build_lesion_images(cohort, {"ultrasound": UltrasoundParams(size=32)}).masks  # not asked: none
    plain = LesionDataset(images, np.arange(4), np.zeros(4), ("ultrasound",))
    assert "ultrasound_mask" not in plain[0]
    assert LesionDataset(images, np.arange(4), np.zeros(4), ("ultrasound",), with_masks=True)[0][
        "ultrasound_mask"].shape == (images.images["ultrasound"].shape[1], 1, 32, 32)

    trainer = FoldTrainer(cohort, config, images, None, None)
    fold = trainer.fold(0, 0, fold_positions(cohort, config)[0][0])
    assert "ultrasound_mask" in trainer.dataset(fold, "fit", ("ultrasound",)).tensors
    assert not any("mask" in k for k in trainer.dataset(fold, "test", ("ultrasound",)).tensors)

    run_experiment(cohort, config, tmp_path / "run")
    state = load_file_keys(tmp_path / "run")
    assert any(k.endswith("mask_head.weight") for k in state)


def load_file_keys(run):
    from safetensors import safe_open

    (path,) = list((run / "checkpoints").rglob("fold0*.safetensors"))[:1]
    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_a_cohort_without_masks_warns_that_the_head_learns_nothing(small_cohort_dir, tmp_path):
    from breastfusion.experiment.run import run_experiment

    cohort = load_cohort(small_cohort_dir)
    cohort.manifest["mask_path"] = ""
    config = load_config(None, variants={"us": ["ultrasound"]}, model=_model(1.0).model_dump(),
                         training={**TINY_TRAINING, "epochs": 1}, cv={"n_splits": 2, "bootstrap": 100}, cache=False)
    with pytest.warns(UserWarning, match="no ultrasound image of the cohort has a lesion mask"):
        run_experiment(cohort, config, tmp_path / "run")

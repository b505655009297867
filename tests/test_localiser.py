"""breastfusion.models.localiser: the lesion localiser of ``preprocess.roi: predicted`` (boxes, geometry, training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breastfusion.config import LocaliserConfig
from breastfusion.data.preprocess import align_mask, params_for, preprocess, roi_box
from breastfusion.data.readers import image_from_array
from breastfusion.models.localiser import (
    box_from_probs,
    box_iou,
    build_localiser,
    fit_localiser,
    frame_box_to_image,
    predict_lesion_probs,
)

# -- box_from_probs ------------------------------------------------------------------------------------------------


def test_box_is_the_region_with_the_most_probability_mass_not_the_largest_or_the_peak():
    prob = np.zeros((40, 40), np.float32)
    prob[2:9, 2:9] = 0.55       # the largest region above 0.5 (49 px), but its mass is only 27
    prob[20:26, 20:26] = 0.99   # 36 px, mass 35.6: the most mass
    prob[30:32, 2:4] = 1.0      # the highest peak, mass 4
    assert box_from_probs(prob, 0.5) == (20, 20, 26, 26)
    # the same map with the confident region shrunk below the faint one's mass: now the faint one wins
    prob[20:26, 20:26] = 0.0
    prob[20:24, 20:24] = 0.99   # mass 15.8 < 27
    assert box_from_probs(prob, 0.5) == (2, 2, 9, 9)


def test_box_is_bottom_right_exclusive_and_respects_the_threshold():
    prob = np.zeros((16, 16), np.float32)
    prob[3:7, 5:12] = 0.8
    prob[2, 5:12] = 0.4         # a rim below 0.5 joins only at a lower threshold
    assert box_from_probs(prob, 0.5) == (3, 5, 7, 12)
    assert box_from_probs(prob, 0.3) == (2, 5, 7, 12)


def test_without_any_pixel_at_the_threshold_the_box_is_the_region_above_half_the_maximum():
    prob = np.zeros((32, 32), np.float32)
    prob[10:14, 10:14] = 0.30   # the core: the peak, below the threshold
    prob[8:16, 9:17] = np.maximum(prob[8:16, 9:17], 0.2)   # a halo above half the peak (0.15) joins the box
    prob[25:30, 25:30] = 0.12   # a faint blob below half the peak is no region at all
    assert box_from_probs(prob, 0.5) == (8, 9, 16, 17)
    # a single faint pixel still gets a box (every image gets one)
    tiny = np.zeros((8, 8), np.float32)
    tiny[5, 6] = 0.01
    assert box_from_probs(tiny, 0.5) == (5, 6, 6, 7)


@pytest.mark.parametrize("prob", [np.zeros((8, 8)), np.zeros((2, 8, 8)), np.zeros(8), np.full((1, 4, 4), 0.9)],
                         ids=["all-zero", "3-D zero", "1-D", "3-D"])
def test_box_from_an_empty_or_non_2d_map_is_refused(prob):
    with pytest.raises(ValueError, match="zero everywhere|should be \\(H, W\\)"):
        box_from_probs(prob)


def test_box_from_a_negative_map_is_refused():
    with pytest.raises(ValueError, match="zero everywhere"):
        box_from_probs(np.full((4, 4), -0.5, np.float32))


# -- box_iou -------------------------------------------------------------------------------------------------------


def test_box_iou_basics():
    a = (10, 20, 30, 60)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, (30, 20, 40, 60)) == 0.0            # touching along an edge: no overlap
    assert box_iou(a, (0, 0, 5, 5)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(50 / 150)   # half of each box overlaps
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 5)) == pytest.approx(0.5)          # one box inside the other
    assert box_iou((0, 0, 10, 10), (2, 3, 6, 9)) == box_iou((2, 3, 6, 9), (0, 0, 10, 10))
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0     # empty boxes: no union, no overlap


# -- frame_box_to_image --------------------------------------------------------------------------------------------

#: a 150 x 230 frame: a textured scan area at rows 12..132, columns 25..205 in a black border
H, W, SCAN = 150, 230, (12, 25, 132, 205)


def _scan_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = np.zeros((H, W), np.uint8)
    top, left, bottom, right = SCAN
    pixels[top:bottom, left:right] = rng.integers(60, 200, (bottom - top, right - left))
    return pixels


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@pytest.mark.parametrize("lesion", [(40, 60, 80, 120), (15, 30, 35, 70), (100, 150, 130, 200), (50, 90, 90, 150)])
def test_a_frame_box_maps_back_onto_the_lesion_in_the_original_image(lesion):
    image = image_from_array(_scan_image())
    params = params_for("ultrasound", size=32)
    prepared = preprocess(image, params)
    # the scan area was found (the black border cropped), so the frame is a resized crop, not the whole image
    assert np.all(np.abs(np.array(prepared.crop) - np.array(SCAN)) <= 4), prepared.crop
    mask = np.zeros((H, W), bool)
    mask[lesion[0]:lesion[2], lesion[1]:lesion[3]] = True
    frame_mask = align_mask(mask, prepared, params) >= 0.5
    frame_box = _mask_box(frame_mask)
    back = frame_box_to_image(frame_box, prepared.crop, params.size)
    assert box_iou(back, lesion) > 0.8, (frame_box, back, lesion)
    # the frame box is not already an image box: mapping it is what puts it on the lesion
    assert box_iou(frame_box, lesion) < 0.5


def test_a_frame_box_in_the_padding_still_gives_a_valid_box_inside_the_scan():
    image = image_from_array(_scan_image(1))
    params = params_for("ultrasound", size=32)
    prepared = preprocess(image, params)
    c_top, c_left, c_bottom, c_right = prepared.crop
    # the scan is wider than tall, so the frame has padding rows above and below it
    assert (c_right - c_left) > (c_bottom - c_top)
    for frame_box in [(0, 0, 2, 32), (0, 10, 1, 20), (30, 4, 32, 28), (31, 31, 32, 32)]:
        top, left, bottom, right = frame_box_to_image(frame_box, prepared.crop, params.size)
        assert c_top <= top < bottom <= c_bottom and c_left <= left < right <= c_right, (frame_box, (top, left,
                                                                                                     bottom, right))
        assert roi_box((H, W), box=(top, left, bottom, right), margin=0.5)   # preprocess accepts it as an ROI
        preprocess(image, params_for("ultrasound", size=32, roi="predicted"), roi=(top, left, bottom, right))
    # a box on the scan's top rows and one on its bottom rows land at the scan's top and bottom
    assert frame_box_to_image((0, 0, 2, 32), prepared.crop, 32)[0] == c_top
    assert frame_box_to_image((30, 4, 32, 28), prepared.crop, 32)[2] == c_bottom


def test_the_whole_frame_maps_back_to_the_whole_crop():
    for crop in [(0, 0, 100, 300), (7, 3, 307, 103), (0, 0, 64, 64)]:
        assert frame_box_to_image((0, 0, 32, 32), crop, 32) == crop


# -- fit_localiser / predict_lesion_probs --------------------------------------------------------------------------


def _squares(n: int, seed: int, size: int = 32, side: int = 8):
    """Noise frames with one bright square each (a random place), its mask and its box."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 110, (n, size, size)).astype(np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    boxes = []
    for i in range(n):
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        images[i, top:top + side, left:left + side] = rng.integers(150, 256, (side, side))
        masks[i, top:top + side, left:left + side] = 255
        boxes.append((top, left, top + side, left + side))
    return images, masks, boxes


TINY_LOCALISER = LocaliserConfig(image_size=32, epochs=12, batch_size=16)


@pytest.fixture(scope="module")
def trained():
    images, masks, _ = _squares(64, seed=0)
    return fit_localiser(images, masks, TINY_LOCALISER, seed=0)


def test_a_fitted_localiser_finds_held_out_lesions_far_better_than_a_central_box(trained):
    images, _, truth = _squares(24, seed=1)
    probs = predict_lesion_probs(trained, images)
    assert probs.shape == images.shape and probs.dtype == np.float32
    assert probs.min() >= 0 and probs.max() <= 1
    found = [box_iou(box_from_probs(p, TINY_LOCALISER.threshold), b) for p, b in zip(probs, truth)]
    centre = [box_iou((8, 8, 24, 24), b) for b in truth]   # a box over the middle quarter of every frame
    assert np.median(found) > 0.5 and np.median(found) > np.median(centre) + 0.3, (found, centre)
    assert np.mean(np.array(found) >= 0.3) >= 0.8


def test_an_untrained_localiser_does_not_find_the_lesions():
    """The fitted localiser's hits are learned, not an artefact of box_from_probs on any map."""
    torch.manual_seed(0)
    untrained = build_localiser(TINY_LOCALISER).eval()
    images, _, truth = _squares(24, seed=1)
    found = [box_iou(box_from_probs(p), b) for p, b in zip(predict_lesion_probs(untrained, images), truth)]
    assert np.median(found) < 0.3


def test_the_same_seed_gives_the_same_localiser_and_another_seed_another():
    images, masks, _ = _squares(8, seed=2)
    settings = LocaliserConfig(image_size=32, epochs=1, batch_size=4)
    seen = []
    a = fit_localiser(images, masks, settings, seed=5, on_epoch=lambda *args: seen.append(args))
    b = fit_localiser(images, masks, settings, seed=5)
    c = fit_localiser(images, masks, settings, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training and next(a.parameters()).device.type == "cpu"
    assert len(seen) == 1 and seen[0][:2] == (1, 1) and np.isfinite(seen[0][2]) and seen[0][2] > 0


def test_every_epoch_trains_when_the_images_do_not_fill_the_last_batch():
    """30 fitting images in batches of 16 (a fold of a small cohort): each epoch has two batches to learn from."""
    images, masks, _ = _squares(30, seed=3)
    seen = []
    fit_localiser(images, masks, LocaliserConfig(image_size=32, epochs=4, batch_size=16), seed=0,
                  on_epoch=lambda *args: seen.append(args))
    assert [epoch for epoch, _, _ in seen] == [1, 2, 3, 4]
    assert all(np.isfinite(loss) for _, _, loss in seen), seen   # a NaN loss: that epoch took no step


@pytest.mark.parametrize("images, masks", [
    (np.zeros((4, 32, 32), np.uint8), np.zeros((4, 32, 16), np.uint8)),
    (np.zeros((4, 32, 32), np.uint8), np.zeros((3, 32, 32), np.uint8)),
    (np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)),
    (np.zeros((1, 32, 32), np.uint8), np.zeros((1, 32, 32), np.uint8)),
    (np.zeros((0, 32, 32), np.uint8), np.zeros((0, 32, 32), np.uint8)),
], ids=["mask width", "mask count", "one 2-D image", "one image", "no image"])
def test_fit_localiser_refuses_mismatched_or_too_few_images(images, masks):
    with pytest.raises(ValueError, match=r"should both be \(N, S, S\)|at least 2"):
        fit_localiser(images, masks, TINY_LOCALISER, seed=0)


def test_predicting_no_frames_gives_an_empty_map(trained):
    out = predict_lesion_probs(trained, np.zeros((0, 32, 32), np.uint8))
    assert out.shape == (0, 32, 32)


def test_the_affine_augmentation_moves_each_frame_and_its_mask_together():
    from breastfusion.models.localiser import _random_affine

    x = torch.zeros(6, 1, 32, 32)
    y = torch.zeros(6, 1, 32, 32)
    for i in range(6):
        top, left = 4 + 3 * i, 20 - 2 * i
        x[i, 0, top:top + 8, left:left + 8] = 3.0
        y[i, 0, top:top + 8, left:left + 8] = 1.0
    moved_x, moved_y = _random_affine(x, y, torch.Generator().manual_seed(0))
    assert moved_x.shape == x.shape and moved_y.shape == y.shape
    assert not torch.allclose(moved_y, y)                                # the masks did move
    for i in range(6):
        bright, inside = moved_x[i, 0] > 1.5, moved_y[i, 0] > 0.5
        overlap = (bright & inside).sum() / (bright | inside).sum()
        assert overlap > 0.8                                             # ... with their frames
    assert float(moved_x.min()) >= 0.0 and float(moved_y.max()) <= 1.0   # the border is background / no lesion

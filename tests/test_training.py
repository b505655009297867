"""The training engine: fusions, missing modalities, sampling, early stopping, and exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from breastfusion.config import load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.data.synthetic.cohort import generate_cohort
from breastfusion.experiment.crossval import cross_validate, inner_split, network_spec
from breastfusion.evaluation.splits import subject_folds
from breastfusion.models.network import build_network
from breastfusion.data.transforms import drop_modalities
from breastfusion.data.preprocess import params_for
from breastfusion.data.tensors import LesionDataset, build_lesion_images
from breastfusion.training.fit import channels_last, fit_predict, predict_probs
from breastfusion.training.module import LesionClassifier
from breastfusion.training.sampling import EpochSampler

from .conftest import TINY_MODEL, TINY_TRAINING
from .test_models import MODALITIES, SUBSETS, _batch


@pytest.mark.parametrize("attention", ["none", "eca", "cbam"])
@pytest.mark.parametrize("fusion", ["concat", "gated", "late"])
@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_every_fusion_attention_and_subset_gives_finite_logits(fusion, attention, modalities):
    tiny = {m: {**TINY_MODEL[m], "attention": attention, "view_pooling": "attention" if fusion == "gated" else "mean"}
            for m in TINY_MODEL}
    model = load_config(None, model={**tiny, "fusion": fusion}).model
    out = build_network(modalities, model, n_clinical_features=5)(_batch())
    assert out.shape == (4,) and torch.isfinite(out).all()


@pytest.mark.parametrize("fusion", ["concat", "gated", "late"])
def test_absent_modality_is_ignored_by_every_fusion(fusion):
    torch.manual_seed(0)
    net = build_network(MODALITIES, load_config(None, model={**TINY_MODEL, "fusion": fusion}).model, 5).eval()
    batch = _batch()
    batch["clinical_present"][:] = False
    noisy = dict(batch, clinical=torch.randn_like(batch["clinical"]) * 100)
    assert torch.allclose(net(batch), net(noisy), atol=1e-6)


def test_gates_sum_to_one_over_present_modalities():
    torch.manual_seed(0)
    net = build_network(MODALITIES, load_config(None, model={**TINY_MODEL, "fusion": "gated"}).model, 5).eval()
    batch = _batch()
    batch["ultrasound_views"][:2] = False
    net(batch)
    gates = net.fusion.last_gates
    assert torch.allclose(gates.sum(1), torch.ones(4))
    assert (gates[:2, 1] == 0).all() and (gates[2:, 1] > 0).all()


def test_modality_dropout_never_hides_everything():
    torch.manual_seed(0)
    batch = _batch(b=256)
    batch["mammography_views"][:100] = False  # some samples have fewer modalities to begin with
    out = drop_modalities(batch, MODALITIES, p=0.9)
    present = torch.stack([out["mammography_views"].any(1), out["ultrasound_views"].any(1),
                           out["clinical_present"]], 1)
    assert present.any(1).all()
    assert (present.sum(1) == 1).float().mean() > 0.5  # and it does hide a lot at p=0.9
    assert not (present[:100, 0]).any()  # never reveals a modality that was absent


def test_balanced_sampler_draws_classes_equally_and_repeats_per_epoch():
    labels = np.array([1] * 20 + [0] * 180)
    sampler = EpochSampler(labels, seed=3, balanced=True)
    sampler.set_epoch(0)
    first = list(sampler)
    assert abs(labels[first].mean() - 0.5) < 0.1
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first and second != first
    plain = EpochSampler(labels, seed=3)
    assert sorted(plain) == list(range(200))


def test_inner_validation_split_stays_inside_the_training_fold():
    cohort_lesions = pd.DataFrame({"subject_id": [f"S{i // 2}" for i in range(200)],
                                   "lesion_id": [f"L{i}" for i in range(200)],
                                   "y": [(i // 2) % 3 == 0 for i in range(200)]}).astype({"y": int})
    train, test = subject_folds(cohort_lesions, n_splits=5, seed=0)[0]
    fit, val = inner_split(cohort_lesions, train, fraction=0.2, seed=1)
    assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    subjects = lambda idx: set(cohort_lesions.iloc[idx]["subject_id"])  # noqa: E731
    assert not subjects(fit) & subjects(val) and not subjects(val) & subjects(test)


def _config(**training):
    return load_config(None, variants={"us": ["ultrasound"], "fused": ["ultrasound", "clinical"]},
                       model=TINY_MODEL, training={**TINY_TRAINING, "epochs": 3, **training},
                       cv={"n_splits": 4, "bootstrap": 100})


def test_a_subject_with_missing_modalities_trains_and_predicts(tmp_path):
    root = tmp_path / "cohort"
    generate_cohort(root, n_subjects=60, seed=5, image_px=32, missing_rate=0.4)
    cohort = load_cohort(root)
    config = _config(modality_dropout=0.3, sampler="balanced", class_weights=True, val_fraction=0.25)
    predictions = cross_validate(cohort, config).predictions
    assert predictions.groupby("variant")["subject_id"].nunique().to_dict() == {"us": 60, "fused": 60}
    assert predictions["prob"].between(0, 1).all() and predictions["prob"].notna().all()
    fused = predictions[predictions["variant"] == "fused"]
    # each prediction says which of the variant's modalities that lesion actually had
    # ("" : the subject has none of them, e.g. mammography only, and gets the prior)
    assert set(fused["modalities_used"]) <= {"", "ultrasound", "clinical", "ultrasound;clinical"}
    assert len(set(fused["modalities_used"])) > 1


def test_interrupted_cross_validation_resumes_to_the_same_numbers(tmp_path, small_cohort_dir, monkeypatch):
    cohort = load_cohort(small_cohort_dir)
    config = _config()
    reference = cross_validate(cohort, config, checkpoint_dir=tmp_path / "ref").predictions

    calls = itertools.count()
    original = LesionClassifier.on_train_batch_end

    def crash_in_fold_2(self, outputs, batch, batch_idx):
        # fold 1: us 3 epochs, the clinical network fused starts from (no variant lists it, so it is
        # trained on demand) 3 epochs, fused 5 fine-tune epochs, 2 batches each; crash in fold 2's us
        # network, epoch 2, second batch
        if next(calls) == 2 * 3 + 2 * 3 + 2 * 5 + 2 + 1:
            raise RuntimeError("simulated kill")
        return original(self, outputs, batch, batch_idx)

    monkeypatch.setattr(LesionClassifier, "on_train_batch_end", crash_in_fold_2, raising=False)
    with pytest.raises(RuntimeError, match="simulated kill"):
        cross_validate(cohort, config, checkpoint_dir=tmp_path / "run")
    us = tmp_path / "run" / "networks" / network_spec(config, "us").key
    fused = tmp_path / "run" / "networks" / network_spec(config, "fused").key
    assert {p.name for p in us.glob("fold*.csv")} == {"fold0.csv"}
    assert {p.name for p in fused.glob("fold*.csv")} == {"fold0.csv"}
    assert (us / "fold1-running" / "last.ckpt").is_file()  # epoch 1 of fold 2 was checkpointed

    monkeypatch.setattr(LesionClassifier, "on_train_batch_end", original, raising=False)
    resumed = cross_validate(cohort, config, checkpoint_dir=tmp_path / "run").predictions
    pd.testing.assert_frame_equal(resumed, reference, check_exact=False, rtol=1e-6)
    assert not (us / "fold1-running").exists()
    # every variant's checkpoint is its network's, linked, not trained again
    assert (tmp_path / "run" / "us" / "fold3.safetensors").samefile(us / "fold3.safetensors")


def test_channels_last_holds_the_weights_in_that_layout_only_while_training():
    net = build_network(("ultrasound",), load_config(None, model=TINY_MODEL).model, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    convs = [p for p in net.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous() for p in convs)
    with channels_last(net):
        assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs
                   if p.shape[1] > 1 and p.shape[-1] > 1)  # (a 1-channel or 1x1 kernel is both)
    assert all(p.is_contiguous() for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the layout moved, not the values


def test_fit_predict_trains_channels_last_and_returns_a_contiguous_network(tmp_path, monkeypatch):
    config = _config()
    data = _tiny_data(tmp_path)
    net = build_network(("ultrasound",), config.model, 0)
    layouts = []
    original = LesionClassifier.training_step

    def record_layout(self, batch, batch_idx):
        layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in self.net.parameters()
                           if p.ndim == 4))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LesionClassifier, "training_step", record_layout)
    probs = fit_predict(net, data, data, config.training, seed=0)
    assert layouts and all(layouts)
    assert all(p.is_contiguous() for p in net.parameters())
    # what training returned for the held-out lesions is what the (contiguous) network predicts afterwards
    np.testing.assert_allclose(probs, predict_probs(net, data, tta=config.training.tta), atol=1e-5)


def _tiny_data(tmp_path):
    """24 synthetic subjects' ultrasound lesions at 32 px, as one dataset."""
    root = tmp_path / "cohort"
    generate_cohort(root, n_subjects=24, seed=3, image_px=32)
    cohort = load_cohort(root)
    images = build_lesion_images(cohort, {"ultrasound": params_for("ultrasound", size=32)}, cache=None)
    labels = cohort.lesions["y"].to_numpy()
    return LesionDataset(images, np.arange(len(labels)), labels, ("ultrasound",))


def _weights_after(data, training):
    """The trained network's state and its predictions on ``data``, from a fixed initialisation."""
    torch.manual_seed(0)
    net = build_network(("ultrasound",), _config().model, 0)
    probs = fit_predict(net, data, data, training, seed=0)
    return {k: v.clone() for k, v in net.state_dict().items()}, probs


def test_ema_predicts_with_the_moving_average_of_the_weights(tmp_path, monkeypatch):
    """ema_epochs: the network that training returns (and predicts with) is the moving average: with a tiny
    time constant it is the final weights, with a huge one it stays at the weights after the first step; in
    between it is neither."""
    data = _tiny_data(tmp_path)
    base = _config().training.model_copy(update={"epochs": 3})
    after_first_step = {}
    original = LesionClassifier.on_train_batch_end

    def keep_first(self, outputs, batch, batch_idx):
        if not after_first_step:
            after_first_step.update({k: v.detach().clone() for k, v in self.net.state_dict().items()})
        return original(self, outputs, batch, batch_idx)

    monkeypatch.setattr(LesionClassifier, "on_train_batch_end", keep_first, raising=False)
    final, final_probs = _weights_after(data, base)
    first = dict(after_first_step)
    short, short_probs = _weights_after(data, base.model_copy(update={"ema_epochs": 1e-6}))
    long, _ = _weights_after(data, base.model_copy(update={"ema_epochs": 1e9}))
    mid, mid_probs = _weights_after(data, base.model_copy(update={"ema_epochs": 1.0}))
    floats = [k for k, v in final.items() if v.is_floating_point()]
    for k in floats:
        torch.testing.assert_close(short[k], final[k])
        torch.testing.assert_close(long[k], first[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(short_probs, final_probs, atol=1e-6)
    assert any(not torch.allclose(mid[k], final[k]) for k in floats)
    assert any(not torch.allclose(mid[k], first[k]) for k in floats)
    assert not np.allclose(mid_probs, final_probs)


def test_ema_time_constant_is_in_epochs_whatever_the_cohort_size():
    from breastfusion.training.fit import WeightEMA

    small, large = WeightEMA(2.0, 5), WeightEMA(2.0, 50)
    # after one epoch's steps the old weights keep the same share: exp(-1/2)
    assert small.decay ** 5 == pytest.approx(np.exp(-0.5)) and large.decay ** 50 == pytest.approx(np.exp(-0.5))
    assert small.should_update(step_idx=0) and not small.should_update(epoch_idx=0)


def test_an_interrupted_fit_with_ema_resumes_to_the_same_average(tmp_path, monkeypatch):
    """The moving average is saved with every epoch's checkpoint and restored on resume, so a killed and resumed
    fit ends with the same averaged network as an uninterrupted one."""
    data = _tiny_data(tmp_path)
    training = _config().training.model_copy(update={"epochs": 3, "ema_epochs": 1.0})
    reference, reference_probs = _weights_after(data, training)

    calls = itertools.count()
    original = LesionClassifier.on_train_batch_end

    def crash_in_epoch_3(self, outputs, batch, batch_idx):
        if self.current_epoch == 2 and next(calls) == 0:
            raise RuntimeError("simulated kill")
        return original(self, outputs, batch, batch_idx)

    monkeypatch.setattr(LesionClassifier, "on_train_batch_end", crash_in_epoch_3, raising=False)
    torch.manual_seed(0)
    net = build_network(("ultrasound",), _config().model, 0)
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit_predict(net, data, data, training, seed=0, work_dir=tmp_path / "fold")
    assert (tmp_path / "fold" / "last.ckpt").is_file()
    monkeypatch.setattr(LesionClassifier, "on_train_batch_end", original, raising=False)
    torch.manual_seed(0)
    net = build_network(("ultrasound",), _config().model, 0)
    probs = fit_predict(net, data, data, training, seed=0, work_dir=tmp_path / "fold")
    for k, v in reference.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, reference_probs, atol=1e-5)

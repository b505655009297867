"""Seed ensembles (``training.seeds``): K networks per fold from different seeds, their logits averaged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from breastfusion.bundle import export_bundle, load_bundle
from breastfusion.config import ConfigError, load_config
from breastfusion.data.manifest import load_cohort
from breastfusion.experiment.crossval import network_spec
from breastfusion.experiment.run import run_experiment
from breastfusion.explain.case import explain_case
from breastfusion.explain.runner import explain_run
from breastfusion.models.network import (MultimodalNet, SeedEnsemble, SingleNetworkRequired, build_network,
                                         member_seed, require_single_network)
from breastfusion.experiment.run_artifacts import RunFolderError, load_network, load_run

from .conftest import TINY_MODEL, TINY_TRAINING


def _config(seeds: int, **extra):
    return load_config(None, variants={"us": ["ultrasound"]}, model=TINY_MODEL,
                       training={**TINY_TRAINING, "seeds": seeds, **extra}, cv={"n_splits": 3, "bootstrap": 100})


@pytest.fixture(scope="module")
def runs(small_cohort_dir, tmp_path_factory):
    """The same cohort and folds run with one network per fold and with a two-seed ensemble."""
    root = tmp_path_factory.mktemp("seed-runs")
    cohort = load_cohort(small_cohort_dir)
    out = {}
    for seeds in (1, 2):
        run_experiment(cohort, _config(seeds), root / f"seeds{seeds}")
        out[seeds] = root / f"seeds{seeds}"
    return out


def test_an_ensemble_averages_its_members_logits():
    torch.manual_seed(0)
    model = load_config(None, model=TINY_MODEL).model
    ensemble = build_network(("ultrasound",), model, 0, seeds=3)
    assert isinstance(ensemble, SeedEnsemble) and len(ensemble.members) == 3
    assert ensemble.modalities == ("ultrasound",)
    batch = {"ultrasound": torch.randn(4, 1, 1, 32, 32), "ultrasound_views": torch.ones(4, 1, dtype=torch.bool)}
    ensemble.eval()
    with torch.no_grad():
        members = torch.stack([m(batch) for m in ensemble.members])
        assert not torch.allclose(members[0], members[1])  # differently initialised
        torch.testing.assert_close(ensemble(batch), members.mean(0))
    assert isinstance(build_network(("ultrasound",), model, 0), MultimodalNet)


def test_steps_that_read_one_networks_internals_refuse_an_ensemble():
    model = load_config(None, model=TINY_MODEL).model
    ensemble = build_network(("ultrasound",), model, 0, seeds=2)
    with pytest.raises(SingleNetworkRequired, match="seed ensemble of 2"):
        require_single_network(ensemble, "Score-CAM")
    with pytest.raises(SingleNetworkRequired, match="stage 2"):
        ensemble.features({})
    single = build_network(("ultrasound",), model, 0)
    assert require_single_network(single, "Score-CAM") is single


def test_stage2_with_a_seed_ensemble_is_refused_in_the_config():
    with pytest.raises(ConfigError, match="training.seeds"):
        load_config(None, variants={"us": {"modalities": ["ultrasound"], "stage2": "logistic"}},
                    training={"seeds": 3})


def test_seeds_enter_the_network_key_and_one_seed_keeps_the_old_key():
    keys = {s: network_spec(_config(s), "us").key for s in (1, 2, 3)}
    assert len(set(keys.values())) == 3
    # seeds: 1 leaves the key as it was before the setting existed: the same as a config that never names it
    assert keys[1] == network_spec(load_config(None, variants={"us": ["ultrasound"]}, model=TINY_MODEL,
                                               training=TINY_TRAINING, cv={"n_splits": 3, "bootstrap": 100}),
                                   "us").key


def test_member_zero_is_the_single_network_and_member_one_its_own_seed(runs):
    single, ensemble = load_run(runs[1]), load_run(runs[2])
    for k in range(3):
        one = load_file(str(single.checkpoint("us", k)))
        two = load_file(str(ensemble.checkpoint("us", k)))
        assert set(two) == {f"members.{j}.{name}" for j in (0, 1) for name in one}
        for name, tensor in one.items():
            torch.testing.assert_close(two[f"members.0.{name}"], tensor, rtol=0, atol=0)
        weights = [n for n in one if n.endswith("weight") and one[n].ndim == 4]
        assert any(not torch.equal(two[f"members.0.{n}"], two[f"members.1.{n}"]) for n in weights)
    assert member_seed(7, 0) == 7 and member_seed(7, 1) != 7


def test_ensemble_predictions_are_the_checkpoints_mean_logit_and_differ_from_one_network(runs):
    art = load_run(runs[2])
    assert isinstance(art.network("us", 0), SeedEnsemble)
    written = pd.read_csv(runs[2] / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    written = written[written["variant"] == "us"].sort_values("lesion_id").reset_index(drop=True)
    recomputed = art.predict("us").sort_values("lesion_id").reset_index(drop=True)
    np.testing.assert_allclose(recomputed["prob"], written["prob"], rtol=1e-5, atol=1e-6)
    single = pd.read_csv(runs[1] / "predictions.csv", dtype={"subject_id": str, "lesion_id": str})
    single = single[single["variant"] == "us"].sort_values("lesion_id").reset_index(drop=True)
    assert not np.allclose(single["prob"], written["prob"])


def test_a_checkpoint_with_other_seeds_than_the_config_is_refused(runs):
    art = load_run(runs[2])
    with pytest.raises(RunFolderError, match="2 seed"):
        load_network(art.checkpoint("us", 0), _config(1), "us")


@pytest.fixture(scope="module")
def fused_ensemble_run(small_cohort_dir, tmp_path_factory):
    """An ultrasound + clinical network as a two-seed ensemble (2 folds, 1 epoch): every explanation step reads it."""
    out = tmp_path_factory.mktemp("seed-fused") / "run"
    config = load_config(None, variants={"fused": ["ultrasound", "clinical"]}, model=TINY_MODEL,
                         training={**TINY_TRAINING, "epochs": 1, "seeds": 2}, cv={"n_splits": 2, "bootstrap": 100})
    run_experiment(load_cohort(small_cohort_dir), config, out)
    return out


def test_an_ensemble_bundle_predicts_and_explains_a_case_with_its_members(runs, small_cohort_dir, tmp_path):
    bundle = load_bundle(export_bundle(runs[2], tmp_path / "bundle"))
    assert all(isinstance(net, SeedEnsemble) for net in bundle.networks)
    predicted = bundle.predict(small_cohort_dir)
    assert predicted["prob"].between(0, 1).all() and len(predicted) > 0
    case = explain_case(bundle, small_cohort_dir, method="gradcam")
    assert sum(case.phi.values()) == pytest.approx(case.full - case.empty, abs=1e-9)
    assert abs(case.full - case.empty) > 1e-6
    assert case.heatmaps and all(h.heatmap.shape == h.image.shape and np.isfinite(h.heatmap).all()
                                 and 0 <= h.heatmap.min() and h.heatmap.max() <= 1 for h in case.heatmaps)


def test_a_seed_ensemble_run_is_explained_through_its_members(fused_ensemble_run, tmp_path):
    art = load_run(fused_ensemble_run)
    assert isinstance(art.network("fused", 0), SeedEnsemble)
    result = explain_run(fused_ensemble_run, out=tmp_path / "explain", n_cases=1, method="gradcam",
                         faithfulness_methods=["gradcam"], importance_repeats=2, update_run=False)
    contribution = result["contribution"]
    assert contribution["efficiency_max_error"] < 1e-9
    assert set(contribution["share_percent"]) == {"ultrasound", "clinical"}
    # the Shapley game's full coalition is the ensemble's own prediction of each held-out lesion
    phi = pd.read_csv(tmp_path / "explain" / "modality_shapley.csv", dtype={"lesion_id": str})
    own = art.predict("fused")[["lesion_id", "prob"]].astype({"lesion_id": str})
    merged = phi.merge(own, on="lesion_id")
    assert len(merged) == len(phi) > 0
    np.testing.assert_allclose(merged["full"], merged["prob"], atol=1e-5)
    # clinical permutation importance ran on the ensemble (its branch-wise shortcut is checked against the network)
    assert result["clinical_importance"] and np.isfinite(result["clinical_importance_auc"])
    heatmaps = np.load(tmp_path / "explain" / "heatmaps.npz")
    assert heatmaps.files and all(0 <= heatmaps[f].min() and heatmaps[f].max() <= 1 for f in heatmaps.files)


def test_a_seed_ensemble_equals_the_ensemble_of_single_runs_at_its_member_seeds(small_cohort_dir, tmp_path):
    """``training.seeds: K`` is ``breastfusion ensemble`` of K one-network runs with ``training.seed`` j x
    MEMBER_SEED_STRIDE (member j's seed): the benches measure a K-seed recipe member by member this way."""
    from breastfusion.experiment.crossval import fold_seed
    from breastfusion.experiment.run_ensemble import ensemble_runs
    from breastfusion.models.network import MEMBER_SEED_STRIDE

    cohort = load_cohort(small_cohort_dir)
    run_experiment(cohort, _config(2, tta="hflip"), tmp_path / "seeds2")
    singles = []
    for j in (0, 1):
        config = _config(1, tta="hflip", seed=j * MEMBER_SEED_STRIDE)
        assert all(fold_seed(config, k) == member_seed(fold_seed(_config(2), k), j) for k in range(3))
        run_experiment(cohort, config, tmp_path / f"member{j}")
        singles.append(tmp_path / f"member{j}")
    ensemble_runs(singles, tmp_path / "ensemble", variants=["us"])

    def probs(run, name):
        frame = pd.read_csv(run / name, dtype={"subject_id": str, "lesion_id": str})
        return frame[frame["variant"] == "us"].sort_values(["fold", "lesion_id"])["prob"].to_numpy()

    for name in ("predictions.csv", "calibration_predictions.csv"):
        joined = probs(tmp_path / "ensemble", name)
        np.testing.assert_allclose(joined, probs(tmp_path / "seeds2", name), rtol=1e-4, atol=1e-5)
        assert not np.allclose(joined, probs(singles[0], name), rtol=1e-4, atol=1e-5)  # two networks, not one

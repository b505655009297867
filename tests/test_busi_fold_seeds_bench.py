"""bench/busi_fold_seeds.py: the BUSI headline recipes gathered over fold seeds from the stored bench results."""

from __future__ import annotations

import statistics

import pytest

from .bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("busi_fold_seeds")


def test_each_recipe_gathers_its_seeds_mean_sd_and_target(bench):
    real_data = {"busi_pretrained_auc": 0.91, "busi_pretrained_ensemble_auc": 0.935,
                 "busi_pretrained_ensemble_vs_pretrained": {"auc_difference": 0.025, "p": 0.01}}
    recipes = [{"name": "lite0_seeds3_cvseed1_2026_12_06", "auc": 0.89},
               {"name": "lite0_seeds3_cvseed2_2026_12_06", "auc": 0.92},
               {"name": "lite0s3_localised_cvseed2", "auc": 0.93,
                "members": [{"run": "busi_recipes/lite0_seeds3_cvseed2_2026_12_06", "auc": 0.92,
                             "auc_difference": 0.01, "p": 0.2},
                            {"run": "busi_recipes/localised_xfit_cvseed2", "auc": 0.88, "auc_difference": 0.05,
                             "p": 0.001}]},
               {"name": "unrelated", "auc": 0.5}]
    summary = bench.summarise(real_data, recipes, other_seeds=(1, 2))

    lite0 = summary["bus_clinical_lite0.yaml (ImageNet Lite0, a 3-seed ensemble)"]
    assert lite0["auc_by_fold_seed"] == {"0": 0.91, "1": 0.89, "2": 0.92}
    assert lite0["mean"] == pytest.approx(statistics.fmean([0.91, 0.89, 0.92]))
    assert lite0["sd"] == pytest.approx(statistics.stdev([0.91, 0.89, 0.92]))
    assert lite0["fold_seeds_meeting_target"] == [] and lite0["missing_fold_seeds"] == []

    ensemble = summary["ensemble 3-seed Lite0 + localised"]
    assert ensemble["auc_by_fold_seed"] == {"0": 0.935, "2": 0.93}
    assert ensemble["missing_fold_seeds"] == [1]
    assert ensemble["fold_seeds_meeting_target"] == ["0", "2"]
    # the difference against Lite0 alone, not against the other member
    assert ensemble["vs_lite0_by_fold_seed"] == {"0": {"auc_difference": 0.025, "p": 0.01},
                                                 "2": {"auc_difference": 0.01, "p": 0.2}}

    scratch = summary["bus_clinical.yaml (from scratch, whole frame, no masks)"]
    assert scratch["auc_by_fold_seed"] == {} and scratch["mean"] is None and scratch["sd"] is None
    assert scratch["missing_fold_seeds"] == [0, 1, 2]

    table = bench.format_table(summary)
    assert ("| ensemble 3-seed Lite0 + localised | 0.935 (+0.025 vs Lite0, p = 0.01) | — | 0.930 (+0.010 vs Lite0, "
            "p = 0.2)") in table
    # the one-network rows read seed 0 from the snapshot of real_data.json, absent here: missing, not taken from
    # the 3-seed entries
    assert summary["bus_clinical_lite0.yaml with training.seeds: 1 (one network)"]["missing_fold_seeds"] == [0, 1, 2]
    assert f"{lite0['mean']:.3f} ± {lite0['sd']:.3f}" in table


def test_a_recipe_real_data_does_not_run_takes_seed_0_from_the_recipe_runs(bench):
    """The from-scratch pair has no real_data.json key: its seed 0 is the ``*_cvseed0`` entry, compared with its
    localised member (not with Lite0, which it does not contain)."""
    pair = {"run": "busi_recipes/localised_xfit_cvseed0", "auc": 0.89, "auc_difference": 0.012, "p": 0.03}
    recipes = [{"name": "scratch_localised_cvseed0", "auc": 0.902,
                "members": [{"run": "busi_recipes/scratch_cvseed0", "auc": 0.85, "auc_difference": 0.05,
                             "p": 0.001}, pair]},
               {"name": "scratch_localised_cvseed2", "auc": 0.87, "members": []}]
    summary = bench.summarise({"busi_default_auc": 0.84}, recipes, other_seeds=(1, 2))

    row = summary["ensemble bus_clinical.yaml + localised (from scratch; masks for training)"]
    assert row["auc_by_fold_seed"] == {"0": 0.902, "2": 0.87}
    assert row["missing_fold_seeds"] == [1]
    assert row["fold_seeds_meeting_target"] == ["0"] and row["target"] == 0.88
    assert row["vs_localised_by_fold_seed"] == {"0": {"auc_difference": 0.012, "p": 0.03}}
    assert "vs_lite0_by_fold_seed" not in row
    # recipes real_data.json runs still read seed 0 there, not from a *_cvseed0 entry
    assert summary["bus_clinical.yaml (from scratch, whole frame, no masks)"]["auc_by_fold_seed"] == {"0": 0.84}

    table = bench.format_table(summary)
    assert "0.902 (+0.012 vs localised, p = 0.03)" in table


def test_reruns_are_listed_beside_their_seed_and_counted_in_the_every_run_mean(bench):
    """The one-network Lite0 row: seed 0 from the snapshot of real_data.json that main() adds under ONE_NETWORK."""
    real_data = {"busi_pretrained_auc": 0.95, bench.ONE_NETWORK: {"busi_pretrained_auc": 0.92}}
    recipes = [{"name": "lite0_cvseed1", "auc": 0.90}, {"name": "lite0_cvseed2", "auc": 0.93},
               {"name": "lite0_cvseed0_2026_12_06", "auc": 0.88}, {"name": "lite0_cvseed0_tseed1", "auc": 0.91}]
    summary = bench.summarise(real_data, recipes, other_seeds=(1, 2))
    lite0 = summary["bus_clinical_lite0.yaml with training.seeds: 1 (one network)"]
    assert lite0["auc_by_fold_seed"] == {"0": 0.92, "1": 0.90, "2": 0.93}  # first runs: the per-seed view
    assert summary["bus_clinical_lite0.yaml (ImageNet Lite0, a 3-seed ensemble)"]["auc_by_fold_seed"] == {"0": 0.95}
    assert lite0["reruns_by_fold_seed"] == {"0": [0.88, 0.91]}  # the rerun names not found are not invented
    every = [0.92, 0.90, 0.93, 0.88, 0.91]
    assert lite0["n_runs"] == 5 and lite0["all_runs_mean"] == pytest.approx(statistics.fmean(every))
    assert lite0["all_runs_sd"] == pytest.approx(statistics.stdev(every)) and lite0["runs_meeting_target"] == 1
    table = bench.format_table(summary)
    assert "0.920; rerun 0.880, 0.910" in table
    assert f"{statistics.fmean(every):.3f} ± {statistics.stdev(every):.3f}, n = 5 (1 at target)" in table
    # a recipe without reruns has no every-run figures
    assert "n_runs" not in summary["ensemble Lite0 (one network) + bus_clinical.yaml (no masks)"]


def test_a_recipe_member_seed_0_is_read_from_its_recipe_run_in_real_data(bench):
    real_data = {"busi_quartet_auc": 0.93, "busi_quartet_members": {
        "lite0": {"auc": 0.89, "auc_difference": 0.04, "p": 0.001},
        "lite0_localised": {"auc": 0.91, "auc_difference": 0.02, "p": 0.01}}}
    recipes = [{"name": "lite0_crops_cvseed1", "auc": 0.90},
               {"name": "lite0s3_quartet_cvseed1", "auc": 0.92,
                "members": [{"run": "busi_recipes/lite0_seeds3_cvseed1_2026_12_06", "auc": 0.9,
                             "auc_difference": 0.02, "p": 0.2}]}]
    summary = bench.summarise(real_data, recipes, other_seeds=(1,))
    member = summary["bus_clinical_lite0_localised.yaml (ImageNet Lite0, in-fold localiser; masks for training)"]
    assert member["auc_by_fold_seed"] == {"0": 0.91, "1": 0.90}
    quartet = summary["ensemble of all four (bus_clinical_lite0_quartet.yaml, 3-seed Lite0; masks for training)"]
    assert quartet["auc_by_fold_seed"] == {"0": 0.93, "1": 0.92}
    assert quartet["vs_lite0_by_fold_seed"] == {"0": {"auc_difference": 0.04, "p": 0.001},
                                               "1": {"auc_difference": 0.02, "p": 0.2}}
    assert quartet["fold_seeds_meeting_target"] == ["0"]
    # no recipe run yet: seed 0 is missing, not an error
    empty = bench.summarise({}, [], other_seeds=(1,))
    assert empty["ensemble of all four (bus_clinical_lite0_quartet.yaml, 3-seed Lite0; masks for training)"][
        "missing_fold_seeds"] == [0, 1]

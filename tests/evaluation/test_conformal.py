"""Split-conformal sets, abstention and the rule-out threshold: exact p-values, the
order-statistic rule, and coverage on repeated synthetic draws."""

from __future__ import annotations

import numpy as np
import pytest

from breastfusion.evaluation.conformal import (
    conformal_p_values,
    conformal_sets,
    empirical_coverage,
    rule_out_sensitivity,
    rule_out_threshold,
    set_decisions,
)
from breastfusion.evaluation.metrics import MetricInputError, SingleClassError


def _draw(n, rng, prevalence=0.4, d=1.5):
    y = (rng.random(n) < prevalence).astype(int)
    x = rng.normal(d * y, 1.0)
    return y, 1 / (1 + np.exp(-(np.log(prevalence / (1 - prevalence)) + d * x - d * d / 2)))


def test_p_values_equal_the_counting_formula():
    rng = np.random.default_rng(0)
    y_cal, p_cal = _draw(200, rng)
    _, p_te = _draw(50, rng)
    pv = conformal_p_values(p_cal, y_cal, p_te, class_conditional=True)
    mal = p_cal[y_cal == 1]
    ben = p_cal[y_cal == 0]
    # Malignant nonconformity 1 - p: p-value = (#{cal malignant with p_i <= p} + 1) / (m + 1).
    np.testing.assert_allclose(pv[:, 1], [(np.sum(mal <= s) + 1) / (mal.size + 1) for s in p_te])
    np.testing.assert_allclose(pv[:, 0], [(np.sum(ben >= s) + 1) / (ben.size + 1) for s in p_te])
    marg = conformal_p_values(p_cal, y_cal, p_te, class_conditional=False)
    a_cal = np.where(y_cal == 1, 1 - p_cal, p_cal)
    np.testing.assert_allclose(marg[:, 1], [(np.sum(a_cal >= 1 - s) + 1) / (a_cal.size + 1) for s in p_te])


def test_decisions_name_every_kind_of_set():
    sets = np.array([[True, False], [False, True], [True, True], [False, False]])
    assert set_decisions(sets).tolist() == ["benign", "malignant", "abstain", "empty"]
    cov = empirical_coverage(sets, [0, 1, 1, 0])
    assert cov["coverage"] == 0.75 and cov["abstain_rate"] == 0.25 and cov["empty_rate"] == 0.25
    assert cov["coverage_benign"] == 0.5 and cov["coverage_malignant"] == 1.0 and cov["mean_size"] == 1.0


@pytest.mark.parametrize("class_conditional", [True, False])
def test_sets_cover_at_nominal_rate_over_repeated_draws(class_conditional):
    rng = np.random.default_rng(1)
    alpha = 0.1
    cov, cov_mal, abstain = [], [], []
    for _ in range(150):
        y_cal, p_cal = _draw(100, rng)
        y_te, p_te = _draw(200, rng)
        c = empirical_coverage(conformal_sets(p_cal, y_cal, p_te, alpha=alpha,
                                              class_conditional=class_conditional), y_te)
        cov.append(c["coverage"])
        cov_mal.append(c["coverage_malignant"])
        abstain.append(c["abstain_rate"])
    assert np.mean(cov) >= 1 - alpha - 0.005  # guarantee is >= 1 - alpha in expectation
    assert np.mean(cov) <= 1 - alpha + 0.04  # and not trivially conservative
    if class_conditional:
        assert np.mean(cov_mal) >= 1 - alpha - 0.005
    assert 0 < np.mean(abstain) < 0.6


def test_rule_out_threshold_is_the_order_statistic_and_agrees_with_p_values():
    rng = np.random.default_rng(2)
    y_cal, p_cal = _draw(500, rng)
    m = int(y_cal.sum())
    for alpha in (0.02, 0.05, 0.1, 1 / (m + 1) * 3):  # the last puts alpha * (m + 1) on an integer
        r = rule_out_threshold(p_cal, y_cal, alpha=alpha)
        assert r.rank == int(np.ceil(alpha * (m + 1) - 1e-9)) - 1 and r.n_malignant == m
        assert r.threshold == np.sort(p_cal[y_cal == 1])[r.rank - 1]
        assert r.rank / (m + 1) < alpha + 1e-12
        # Ruled out (p < t) exactly when the malignant label's class-conditional p-value is below alpha.
        _, p_te = _draw(400, rng)
        pv = conformal_p_values(p_cal, y_cal, p_te)[:, 1]
        np.testing.assert_array_equal(p_te < r.threshold, pv < alpha)


def test_rule_out_with_too_few_malignant_rules_out_nobody():
    r = rule_out_threshold([0.2, 0.9, 0.4, 0.1], [1, 1, 0, 0], alpha=0.05)
    assert r.rank == 0 and r.threshold == 0.0


def test_rule_out_meets_nominal_sensitivity_on_held_out_draws():
    rng = np.random.default_rng(3)
    alpha = 0.05
    sens, sens_pac = [], []
    for _ in range(300):
        y_cal, p_cal = _draw(250, rng)
        y_te, p_te = _draw(400, rng)
        sens.append(rule_out_sensitivity(y_te, p_te, rule_out_threshold(p_cal, y_cal, alpha=alpha).threshold))
        sens_pac.append(rule_out_sensitivity(
            y_te, p_te, rule_out_threshold(p_cal, y_cal, alpha=alpha, delta=0.1).threshold))
    assert np.mean(sens) >= 1 - alpha - 0.003  # marginal guarantee, Monte Carlo slack
    assert np.mean(sens_pac) > np.mean(sens)  # the PAC rule is more cautious


def test_pac_rank_matches_beta_quantile():
    from scipy.stats import beta

    p = np.linspace(0.01, 0.99, 400)
    r = rule_out_threshold(p, np.ones(400, int), alpha=0.05, delta=0.1)
    k = r.rank
    assert beta.sf(0.05, k, 401 - k) <= 0.1 < beta.sf(0.05, k + 1, 400 - k)


BAD = [
    (lambda: conformal_sets([0.2, 0.8], [0, 1], [0.5], alpha=1.0), MetricInputError, r"alpha should be in \(0, 1\)"),
    (lambda: conformal_sets([0.2, 0.8], [1, 1], [0.5]), SingleClassError, "both classes"),
    (lambda: conformal_sets([0.2, 0.8], [0, 1, 1], [0.5]), MetricInputError, "length mismatch"),
    (lambda: conformal_sets([0.2, np.nan], [0, 1], [0.5]), MetricInputError, "NaN or infinite"),
    (lambda: conformal_sets([0.2, 0.8], [0, 1], [1.5]), MetricInputError, "p_test should be"),
    (lambda: rule_out_threshold([0.2, 0.3], [0, 0]), MetricInputError, "malignant subjects"),
    (lambda: rule_out_threshold([0.2, 0.3], [0, 1], alpha=0), MetricInputError, "alpha should be"),
    (lambda: rule_out_threshold([0.2, 0.3], [0, 1], delta=2), MetricInputError, "delta should be"),
    (lambda: set_decisions([True, False]), MetricInputError, r"shape \(n, 2\)"),
    (lambda: empirical_coverage([[True, False]], [0, 1]), MetricInputError, "length mismatch"),
    (lambda: rule_out_sensitivity([0, 0], [0.1, 0.2], 0.5), MetricInputError, "malignant subjects"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()

"""DeLong variance, CI and paired test against R pROC's published values, a slow
direct implementation of the structural components, and the bootstrap.

Reference numbers: the pROC test suite (github.com/xrobin/pROC,
tests/testthat/test-roc.test.R and test-var.R) on its ``aSAH`` data, and pROC's
documented ``ci.auc`` output. pROC orients each curve automatically; on aSAH
all three markers are higher in poor-outcome patients, so its direction
agrees with ours (higher score = positive).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from breastfusion.evaluation.delong import (
    auc_variance,
    delong_ci,
    delong_components,
    delong_covariance,
    delong_test,
)
from breastfusion.evaluation.metrics import MetricInputError, SingleClassError, bootstrap_ci
from tests.evaluation.asah import MARKERS, OUTCOME

# pROC test-var.R: var(roc(aSAH$outcome, marker)) with the DeLong method; AUCs from pROC.
PROC_VAR = {"wfns": 0.00146991470882363, "ndka": 0.0031908105493913, "s100b": 0.00266868245717244}
PROC_AUC = {"wfns": 0.823678861788618, "ndka": 0.611957994579946, "s100b": 0.7313685636856369}

# pROC test-roc.test.R: roc.test(r.a, r.b) (paired DeLong): Z, p, 95% CI of AUC_a - AUC_b.
PROC_PAIRED = [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
]


@pytest.mark.parametrize("name", sorted(PROC_VAR))
def test_auc_and_variance_match_proc(name):
    auc, cov = delong_covariance(OUTCOME, MARKERS[name])
    assert auc[0] == pytest.approx(PROC_AUC[name], rel=1e-12)
    assert auc_variance(OUTCOME, MARKERS[name]) == pytest.approx(PROC_VAR[name], rel=1e-10)
    assert cov.shape == (1, 1)


@pytest.mark.parametrize("a, b, z, p, low, high", PROC_PAIRED)
def test_paired_test_matches_proc(a, b, z, p, low, high):
    t = delong_test(OUTCOME, MARKERS[a], MARKERS[b])
    assert t.z == pytest.approx(z, rel=1e-10)
    assert t.p_value == pytest.approx(p, rel=1e-10)
    assert (t.low, t.high) == pytest.approx((low, high), rel=1e-10)
    swapped = delong_test(OUTCOME, MARKERS[b], MARKERS[a])
    assert swapped.z == pytest.approx(-z, rel=1e-10)
    assert swapped.p_value == pytest.approx(p, rel=1e-10)


def test_one_sided_and_identical_curves_match_proc():
    wfns, s100b = MARKERS["wfns"], MARKERS["s100b"]
    assert delong_test(OUTCOME, wfns, s100b, alternative="greater").p_value == pytest.approx(0.0135878911145941)
    assert delong_test(OUTCOME, wfns, s100b, alternative="less").p_value == pytest.approx(0.986412108885406)
    same = delong_test(OUTCOME, wfns, wfns)
    assert (same.z, same.p_value, same.difference) == (0.0, 1.0, 0.0)


def test_plain_ci_matches_proc():
    # pROC: ci.auc(aSAH$outcome, aSAH$ndka) and ci.auc(aSAH$outcome, aSAH$s100b) (DeLong, 95%).
    ci = delong_ci(OUTCOME, MARKERS["ndka"])
    assert (ci.low, ci.high) == pytest.approx((0.501244999271703, 0.722670989888189), rel=1e-10)
    ci = delong_ci(OUTCOME, MARKERS["s100b"])
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.6301, 0.8326)


def test_logit_ci_is_asymmetric_and_inside_unit_interval():
    ci = delong_ci(OUTCOME, MARKERS["wfns"], transform="logit")
    plain = delong_ci(OUTCOME, MARKERS["wfns"])
    assert 0 < ci.low < ci.auc < ci.high < 1
    assert ci.high - ci.auc < ci.auc - ci.low  # shrinks towards 1
    assert ci.se == plain.se
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(5), np.zeros(5)].astype(int)
    perfect = delong_ci(y, y + rng.normal(0, 0.01, 10), transform="logit")
    assert (perfect.auc, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def _slow_delong(y, scores):
    """Definition of DeLong et al. (1988): explicit pairwise kernel psi(x, y) per model."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # (k, m, n)
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    s10 = np.array([[np.sum((v10[i] - v10[i].mean()) * (v10[j] - v10[j].mean())) / (v10.shape[1] - 1)
                     for j in range(len(scores))] for i in range(len(scores))])
    s01 = np.array([[np.sum((v01[i] - v01[i].mean()) * (v01[j] - v01[j].mean())) / (v01.shape[1] - 1)
                     for j in range(len(scores))] for i in range(len(scores))])
    return psi.mean(axis=(1, 2)), v10, v01, s10 / v10.shape[1] + s01 / v01.shape[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_algorithm_equals_direct_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(90) < 0.4).astype(int)
    a = np.round(rng.normal(y * 1.0, 1.0), 1)  # rounding creates ties
    b = np.round(0.5 * a + rng.normal(y * 0.5, 1.0), 1)
    scores = np.stack([a, b, np.round(rng.random(90), 1)])
    auc, v10, v01 = delong_components(y, scores)
    auc_s, v10_s, v01_s, cov_s = _slow_delong(y, scores)
    np.testing.assert_allclose(auc, auc_s, rtol=1e-12)
    np.testing.assert_allclose(v10, v10_s, rtol=1e-12)
    np.testing.assert_allclose(v01, v01_s, rtol=1e-12)
    np.testing.assert_allclose(delong_covariance(y, scores)[1], cov_s, rtol=1e-10)
    np.testing.assert_allclose(auc, [roc_auc_score(y, s) for s in scores], rtol=1e-12)


def test_delong_se_agrees_with_bootstrap_se():
    rng = np.random.default_rng(7)
    y = (rng.random(400) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(1.2 * y - 0.6, 1.0)))
    se = np.sqrt(auc_variance(y, p))
    ci = bootstrap_ci(y, p, "auc", n_boot=4000, seed=1)
    boot_se = (ci.high - ci.low) / (2 * 1.959964)
    assert boot_se == pytest.approx(se, rel=0.12)


BAD = [
    (dict(y=[1, 1, 1], scores=[0.1, 0.2, 0.3]), SingleClassError, "both classes"),
    (dict(y=[0, 1, 0, 1], scores=[0.1, 0.2, 0.3]), MetricInputError, "length mismatch"),
    (dict(y=[0, 1, 0, 1], scores=[0.1, np.nan, 0.3, 0.4]), MetricInputError, "NaN or infinite"),
    (dict(y=[0, 2, 0, 1], scores=[0.1, 0.2, 0.3, 0.4]), MetricInputError, "0/1 labels"),
    (dict(y=[0, 1, 0, 0], scores=[0.1, 0.2, 0.3, 0.4]), MetricInputError, "at least 2 positives"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD)
def test_bad_input_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        delong_covariance(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(level=1.5), r"level should be in \(0, 1\), got 1.5"),
    (dict(alternative="bigger"), "alternative should be"),
])
def test_bad_test_parameters_raise(kwargs, match):
    with pytest.raises(MetricInputError, match=match):
        delong_test(OUTCOME, MARKERS["wfns"], MARKERS["ndka"], **kwargs)


def test_bad_ci_parameters_raise():
    with pytest.raises(MetricInputError, match="transform should be"):
        delong_ci(OUTCOME, MARKERS["wfns"], transform="probit")
    with pytest.raises(MetricInputError, match="same subjects"):
        delong_test(OUTCOME, MARKERS["wfns"], MARKERS["ndka"][:-1])

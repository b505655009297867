"""The ROC bootstrap band: contains the curve, tightens with more subjects, is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from breastfusion.evaluation.curves import roc_band
from breastfusion.evaluation.metrics import MetricInputError


def _sample(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    return y, y * 1.2 + rng.normal(size=n)


def test_band_holds_the_curve_and_narrows_with_more_subjects():
    y, p = _sample(200, 0)
    band = roc_band(y, p, n_boot=300, seed=1)
    fpr, tpr, low, high = (np.asarray(band[k]) for k in ("fpr", "tpr", "tpr_low", "tpr_high"))
    assert np.all(low <= high) and np.mean((low <= tpr) & (tpr <= high)) > 0.95
    assert tpr[-1] == 1.0 and np.all(np.diff(tpr) >= 0)
    # the curve on the grid is the empirical ROC's upper envelope at each false-positive rate
    f, t, _ = roc_curve(y, p)
    assert tpr[50] == pytest.approx(t[f <= 0.5].max(), abs=0.02)
    y_big, p_big = _sample(2000, 0)
    big = roc_band(y_big, p_big, n_boot=300, seed=1)
    assert np.mean(np.subtract(big["tpr_high"], big["tpr_low"])) < 0.5 * np.mean(high - low)
    assert roc_band(y, p, n_boot=300, seed=1) == band


def test_band_errors():
    with pytest.raises(MetricInputError, match="n_boot should be an integer >= 100"):
        roc_band([0, 1], [0.1, 0.9], n_boot=10)

"""Clinical preprocessing: types inferred, fitted on training rows only, unseen categories warned about."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from breastfusion.data.clinical_features import ClinicalPreprocessor, infer_column_types

TRAIN = pd.DataFrame({
    "subject_id": ["a", "b", "c", "d"],
    "age": [40.0, 50.0, np.nan, 70.0],
    "menopausal_status": ["pre", "post", "post", None],
    "family_history": [0, 1, 0, np.nan],
})


def test_types_are_inferred():
    assert infer_column_types(TRAIN) == {"numeric": ["age"], "categorical": ["menopausal_status"],
                                         "binary": ["family_history"]}


def test_fitted_on_training_rows_only():
    pre = ClinicalPreprocessor().fit(TRAIN)
    test = pd.DataFrame({"subject_id": ["x"], "age": [1000.0], "menopausal_status": ["pre"], "family_history": [1]})
    out = pre.transform(test)
    # age is standardised with the training mean/sd (median-imputed), not the test row's
    train_age = np.array([40.0, 50.0, 50.0, 70.0])
    assert out[0, 0] == pytest.approx((1000 - train_age.mean()) / train_age.std())
    assert pre.n_features_ == out.shape[1] == 1 + 2 + 1
    assert np.isfinite(pre.transform(TRAIN)).all()  # missing values imputed


def test_unseen_category_warns_and_encodes_as_zero():
    pre = ClinicalPreprocessor().fit(TRAIN)
    test = pd.DataFrame({"subject_id": ["x"], "age": [50.0], "menopausal_status": ["peri"], "family_history": [0]})
    with pytest.warns(UserWarning, match=r"'menopausal_status': categories \['peri'\] were not seen"):
        out = pre.transform(test)
    assert out[0, 1:3].tolist() == [0.0, 0.0]


def test_listed_column_missing_from_table():
    with pytest.raises(KeyError, match=r"clinical column\(s\) \['bmi'\] not in the clinical table"):
        ClinicalPreprocessor(numeric=["bmi"]).fit(TRAIN)

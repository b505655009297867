"""Clinical table preprocessing, fitted inside each training fold only.

Column types are numeric, categorical or binary; where the config does not
list them they are inferred (0/1 numbers → binary, other numbers → numeric,
anything else → categorical). Imputation, scaling and one-hot encoding come
from scikit-learn and are fitted on the training fold's subjects, so nothing
of a test fold leaks into the features.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted

__all__ = ["ClinicalPreprocessor", "infer_column_types"]


def infer_column_types(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Split the clinical columns (all but ``subject_id``) into numeric, categorical and binary."""
    types: dict[str, list[str]] = {"numeric": [], "categorical": [], "binary": []}
    for column in frame.columns.drop("subject_id", errors="ignore"):
        values = frame[column].dropna()
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            kind = "binary" if set(values.unique()) <= {0, 1} else "numeric"
        elif pd.api.types.is_bool_dtype(values):
            kind = "binary"
        else:
            kind = "categorical"
        types[kind].append(column)
    return types


class ClinicalPreprocessor(TransformerMixin, BaseEstimator):
    """Impute, scale and one-hot the clinical variables (a thin scikit-learn ColumnTransformer).

    Args:
        numeric, categorical, binary: column names by type; ``None`` infers all three.
    """

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None,
                 binary: list[str] | None = None):
        self.numeric = numeric
        self.categorical = categorical
        self.binary = binary

    def fit(self, frame: pd.DataFrame, y=None) -> "ClinicalPreprocessor":
        """Fit on the training subjects' rows (``subject_id`` is ignored)."""
        if self.numeric is None and self.categorical is None and self.binary is None:
            types = infer_column_types(frame)
        else:
            types = {"numeric": self.numeric or [], "categorical": self.categorical or [],
                     "binary": self.binary or []}
        missing = [c for cols in types.values() for c in cols if c not in frame.columns]
        if missing:
            raise KeyError(f"clinical column(s) {missing} not in the clinical table; found {list(frame.columns)}")
        self.types_ = types
        parts = []
        if types["numeric"]:
            parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                          types["numeric"]))
        if types["categorical"]:
            parts.append(("categorical", make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(handle_unknown="ignore", sparse_output=False)), types["categorical"]))
        if types["binary"]:
            parts.append(("binary", SimpleImputer(strategy="most_frequent"), types["binary"]))
        if not parts:
            raise ValueError("the clinical table has no variables besides subject_id")
        frame = self._as_strings(frame)
        self.transformer_ = ColumnTransformer(parts, remainder="drop").fit(frame)
        self.categories_ = {c: set(frame[c].dropna()) for c in types["categorical"]}
        self.n_features_ = int(self.transformer_.transform(frame.iloc[:1]).shape[1])
        return self

    def _as_strings(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Categorical values as strings (so 1 and "1" are one category), NaN kept."""
        frame = frame.copy()
        for column in self.types_["categorical"]:
            frame[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
        return frame

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows → float32 features (n, ``n_features_``); unseen categories warn and encode as all-zero."""
        check_is_fitted(self, "transformer_")
        frame = self._as_strings(frame)
        for column, seen in self.categories_.items():
            unseen = sorted(set(frame[column].dropna()) - seen)
            if unseen:
                warnings.warn(f"clinical column {column!r}: categories {unseen} were not seen in training; "
                              "they are encoded as all-zero", stacklevel=2)
        return np.asarray(self.transformer_.transform(frame), dtype=np.float32)

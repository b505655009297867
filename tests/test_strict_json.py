"""strict_json: every JSON file the toolkit writes is strict JSON (no NaN / Infinity tokens, no NumPy types)."""

import json
import math

import numpy as np

from breastfusion.strict_json import json_safe, write_json


def test_non_finite_numpy_and_keys_become_strict_json(tmp_path):
    value = {1: np.float32(0.5), "nan": float("nan"), "inf": np.float64(np.inf), "flag": np.bool_(True),
             "n": np.int64(3), "nested": [(np.float64(-np.inf), 2.0)], "text": "a"}
    safe = json_safe(value)
    assert safe == {"1": 0.5, "nan": None, "inf": None, "flag": True, "n": 3, "nested": [[None, 2.0]], "text": "a"}
    assert type(safe["flag"]) is bool and type(safe["n"]) is int and type(safe["1"]) is float
    written = write_json(tmp_path / "out.json", value)
    text = (tmp_path / "out.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == written == safe


def test_finite_floats_are_kept_exactly():
    assert json_safe([0.1, -0.0, 1e300])[0] == 0.1
    assert math.copysign(1, json_safe(-0.0)) == -1

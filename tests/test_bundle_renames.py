"""Bundles exported before a module rename: their skops files name the old module, and still load."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from breastfusion.bundle_renames import RENAMED_MODULES, with_current_modules
from breastfusion.data.clinical_features import ClinicalPreprocessor

TABLE = pd.DataFrame({"subject_id": ["a", "b", "c", "d"], "age": [40.0, 55.0, np.nan, 70.0],
                      "density": ["A", "B", "B", "C"]})


def as_exported_under(data: bytes, old: str, new: str) -> bytes:
    """A skops file's bytes as an export would have written them while ``new`` was still called ``old``."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename == "schema.json":
                content = content.replace(f'"{new}"'.encode(), f'"{old}"'.encode())
            target.writestr(info, content)
    return out.getvalue()


def test_a_preprocessor_exported_under_the_old_module_path_loads_as_the_current_class():
    import skops.io

    fitted = ClinicalPreprocessor().fit(TABLE)
    old = as_exported_under(skops.io.dumps(fitted), "breastfusion.data.clinical", "breastfusion.data.clinical_features")
    assert b"breastfusion.data.clinical_features" not in zipfile.ZipFile(io.BytesIO(old)).read("schema.json")
    with pytest.raises(ModuleNotFoundError):
        skops.io.load(io.BytesIO(old), trusted=skops.io.get_untrusted_types(data=old))

    current = with_current_modules(old)
    assert "breastfusion.data.clinical_features.ClinicalPreprocessor" in skops.io.get_untrusted_types(data=current)
    loaded = skops.io.load(io.BytesIO(current), trusted=skops.io.get_untrusted_types(data=current))
    assert isinstance(loaded, ClinicalPreprocessor)
    assert np.array_equal(loaded.transform(TABLE), fitted.transform(TABLE))


def test_files_naming_no_renamed_module_are_returned_unchanged():
    import skops.io

    data = skops.io.dumps(ClinicalPreprocessor().fit(TABLE))
    assert with_current_modules(data) is data
    assert with_current_modules(b"not a zip") == b"not a zip"  # the loader reports the damage, naming the file


def test_every_renamed_module_points_at_an_importable_module():
    import importlib

    for old, new in RENAMED_MODULES.items():
        importlib.import_module(new)
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)

"""The top-level public names: each resolves to its defining object, and `import breastfusion` stays torch-free."""

import subprocess
import sys

import pytest

import breastfusion


@pytest.mark.parametrize("name", sorted(breastfusion._LAZY))
def test_public_name_resolves_to_its_module_object(name):
    import importlib

    assert getattr(breastfusion, name) is getattr(importlib.import_module(breastfusion._LAZY[name]), name)
    assert name in breastfusion.__all__ and name in dir(breastfusion)


def test_import_breastfusion_does_not_import_torch():
    code = "import sys, breastfusion; print('torch' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Experimentt'"):
        breastfusion.Experimentt

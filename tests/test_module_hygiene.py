"""Module hygiene: every module of the package imports on its own, and none reaches into another's private names.

(a) Each module is imported first, with no other ``breastfusion`` module loaded, as a fresh interpreter
would: an import circle (``a`` imports ``b`` imports ``a``) shows up as an ImportError for whichever side
is imported first. One subprocess imports them all, clearing the package from ``sys.modules`` before each
(third-party libraries stay loaded, so torch is imported once), which keeps the test to seconds.

(b) An AST scan: no ``from x import _y``, ``import x._y`` or ``from x._y import z``. A private name is an
implementation detail of its module; a second module that needs it means the name is public and should
say so (or the code belongs elsewhere).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import breastfusion

PACKAGE_ROOT = Path(breastfusion.__file__).parent

#: Third-party packages of optional extras (pyproject ``[project.optional-dependencies]``) -> the extra.
OPTIONAL_PACKAGES = {"ray": "ray", "onnx": "onnx", "onnxruntime": "onnx"}

#: Private imports waiting for a rename in a module that is being edited elsewhere: (importer, imported name)
#: -> why it is still here. The test fails once an entry is fixed, so the entry goes with the fix.
PENDING: dict[tuple[str, str], str] = {}


def module_names(root: Path | None = None, package: str = "breastfusion") -> list[str]:
    """Dotted names of every module and package under ``root`` (default: the package's folder)."""
    root = root or PACKAGE_ROOT
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join([package, *parts]))
    return names


_IMPORT_EACH = textwrap.dedent("""
    import importlib, json, sys, traceback

    names, out = json.loads(sys.argv[1]), sys.argv[2]
    results = {}
    for name in names:
        for loaded in [m for m in sys.modules if m == "breastfusion" or m.startswith("breastfusion.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
            results[name] = {"ok": True}
        except ModuleNotFoundError as exc:
            results[name] = {"ok": False, "missing": exc.name, "error": traceback.format_exc()}
        except BaseException:
            results[name] = {"ok": False, "missing": None, "error": traceback.format_exc()}
    with open(out, "w") as f:
        json.dump(results, f)
""")


def import_each_first(names: list[str], out: Path, *, env: dict[str, str] | None = None) -> dict[str, dict]:
    """Import each of ``names`` in one subprocess, with no ``breastfusion`` module loaded before it.

    Returns ``{name: {"ok": bool, "missing": the module a ModuleNotFoundError names, "error": traceback}}``.
    """
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and out.is_file(), done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def import_results(tmp_path_factory) -> dict[str, dict]:
    """Each module's import outcome, every module imported first (see the module docstring)."""
    return import_each_first(module_names(), tmp_path_factory.mktemp("imports") / "results.json")


@pytest.mark.parametrize("name", module_names())
def test_module_imports_first_in_a_fresh_interpreter(name, import_results):
    result = import_results[name]
    if result["ok"]:
        return
    missing = (result["missing"] or "").split(".")[0]
    if missing in OPTIONAL_PACKAGES:
        pytest.skip(f"{name} needs {missing} (pip install 'breastfusion[{OPTIONAL_PACKAGES[missing]}]')")
    pytest.fail(f"import {name} as the first breastfusion module fails:\n{result['error']}")


def test_a_planted_import_circle_fails_whichever_side_is_imported_first(tmp_path):
    import os

    package = tmp_path / "breastfusion"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from breastfusion.b import g\n\n\ndef f():\n    return g\n")
    (package / "b.py").write_text("from breastfusion.a import f\n\n\ndef g():\n    return f\n")
    (package / "c.py").write_text("from breastfusion.a import f\n")  # only a victim of the circle
    (package / "d.py").write_text("import breastfusion\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    results = import_each_first(["breastfusion.a", "breastfusion.b", "breastfusion.c", "breastfusion.d"],
                                tmp_path / "results.json", env=env)
    assert {name: r["ok"] for name, r in results.items()} == {
        "breastfusion.a": False, "breastfusion.b": False, "breastfusion.c": False, "breastfusion.d": True}
    assert "circular import" in results["breastfusion.a"]["error"]


# -- (b) private names --------------------------------------------------------------------------------------

def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute module of ``from <level dots><module> import …`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base[:len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([module] if module else []))


def private_imports(source: str, importer: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every private module or name that ``source`` (module ``importer``) imports.

    Private: a dotted part that starts with ``_`` and is not a dunder (``__version__``, ``__future__``).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names
                      if any(_private(part) for part in alias.name.split("."))]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node.module, node.level, importer, is_package)
            for alias in node.names:
                name = f"{module}.{alias.name}"
                if any(_private(part) for part in name.split(".")):
                    found.append((node.lineno, name))
    return found


def _package_violations() -> dict[tuple[str, str], int]:
    violations = {}
    for name in module_names():
        path = PACKAGE_ROOT.joinpath(*name.split(".")[1:])
        is_package = path.is_dir()
        file = path / "__init__.py" if is_package else path.with_suffix(".py")
        for line, imported in private_imports(file.read_text(), name, is_package=is_package):
            violations[(name, imported)] = line
    return violations


def test_no_module_imports_a_private_name_of_another():
    violations = _package_violations()
    new = [f"{importer} (line {line}) imports {imported}" for (importer, imported), line in violations.items()
           if (importer, imported) not in PENDING]
    assert not new, "private names imported across modules (make them public, or move the code):\n" + "\n".join(new)
    fixed = [key for key in PENDING if key not in violations]
    assert not fixed, f"fixed, so remove from PENDING: {fixed}"


def test_bench_scripts_use_only_public_names_of_the_package():
    """The bench scripts drive the package as a user would: through its public names only."""
    bench = PACKAGE_ROOT.parents[1] / "bench"
    if not bench.is_dir():
        pytest.skip(f"no bench/ folder next to {PACKAGE_ROOT.parents[1] / 'src'}")
    found = [f"{path.name} (line {line}) imports {name}" for path in sorted(bench.glob("*.py"))
             for line, name in private_imports(path.read_text(), f"bench.{path.stem}")
             if name.startswith("breastfusion.")]
    assert not found, "bench scripts import private names of breastfusion:\n" + "\n".join(found)


@pytest.mark.parametrize("source, importer, expected", [
    ("from breastfusion.data.cache import ArrayCache, _read_mask\n", "breastfusion.run_artifacts",
     [(1, "breastfusion.data.cache._read_mask")]),
    ("import breastfusion.evaluation._checks\n", "breastfusion.evaluation.metrics",
     [(1, "breastfusion.evaluation._checks")]),
    ("from breastfusion.evaluation._checks import MetricInputError\n", "breastfusion.evaluation.metrics",
     [(1, "breastfusion.evaluation._checks.MetricInputError")]),
    ("from ._checks import check\n", "breastfusion.evaluation.metrics", [(1, "breastfusion.evaluation._checks.check")]),
    ("from . import _impl\n", "breastfusion.evaluation", [(1, "breastfusion.evaluation._impl")]),
    ("def f():\n    from torch._dynamo import config\n", "breastfusion.training.fit", [(2, "torch._dynamo.config")]),
    ("from x import _y as y\n", "breastfusion.a", [(1, "x._y")]),
    # Not private: dunders, public names under a private alias, attribute access.
    ("from __future__ import annotations\nfrom breastfusion import __version__\n", "breastfusion.cli.main", []),
    ("from breastfusion.data.cache import read_mask as _read_mask\n", "breastfusion.run_artifacts", []),
    ("import numpy as _np\nx = _np._private\n", "breastfusion.a", []),
])
def test_the_scan_finds_private_imports(source, importer, expected):
    assert private_imports(source, importer, is_package=importer == "breastfusion.evaluation") == expected


def test_the_scan_catches_a_planted_violation_in_a_package_module(monkeypatch, tmp_path):
    """The whole-package check fails, naming module, line and name, when a module starts importing a private name."""
    planted = tmp_path / "breastfusion"
    (planted / "evaluation").mkdir(parents=True)
    (planted / "__init__.py").write_text("")
    (planted / "evaluation" / "__init__.py").write_text("")
    (planted / "evaluation" / "metrics.py").write_text("def _bin_index():\n    pass\n")
    (planted / "evaluation" / "clinical_utility.py").write_text(
        '"""Doc."""\n\nfrom breastfusion.evaluation.metrics import _bin_index\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_ROOT", planted)
    monkeypatch.setattr(sys.modules[__name__], "PENDING", {})
    with pytest.raises(AssertionError, match=r"breastfusion\.evaluation\.clinical_utility \(line 3\) imports "
                                             r"breastfusion\.evaluation\.metrics\._bin_index"):
        test_no_module_imports_a_private_name_of_another()

"""The README's Python API example runs as written (so the documented notebook API cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "# python-api-example"


def _example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    found = [b for b in blocks if b.startswith(MARKER)]
    assert len(found) == 1, f"README.md needs exactly one ```python block starting with {MARKER!r}"
    return found[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_example(), "README.md:python-api-example", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    assert re.search(r"^fused: AUC \d\.\d\d \[\d\.\d\d, \d\.\d\d\]$", printed, flags=re.M), printed
    assert re.search(r"^clinical: AUC ", printed, flags=re.M), printed
    assert re.search(r"variant\s+fold\s+subject_id\s+y\s+prob", printed), printed      # out-of-fold predictions
    assert re.search(r"subject_id\s+prob\s+call\n0\s+S\d+\s+0?\.\d+\s+(benign|malignant)", printed), printed
    memory, folder = re.search(r"^in memory: P\(malignant\) (\d\.\d+); from the folder: (\d\.\d+)$", printed,
                               flags=re.M).groups()
    assert abs(float(memory) - float(folder)) <= 1e-4, printed  # the in-memory case is the folder's subject
    assert (tmp_path / "runs/notebook/results.json").is_file() and (tmp_path / "tiny-model/bundle.json").is_file()

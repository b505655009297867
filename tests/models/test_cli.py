"""``breastfusion models list`` through the real command line app."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.cli.models import attention_rows, zoo_rows
from breastfusion.models.zoo import ZOO

runner = CliRunner()


def test_models_list_shows_every_encoder_and_attention():
    result = runner.invoke(app, ["models", "list", "--channels", "64"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ZOO:
        assert name in result.output
    assert "parameters at 64 channels" in result.output
    assert "EcaModule" in result.output and "CbamModule" in result.output


def test_models_list_rejects_a_bad_channel_count():
    result = runner.invoke(app, ["models", "list", "--channels", "0"])
    assert result.exit_code != 0


def test_zoo_rows_count_parameters_at_one_channel():
    rows = {row["name"]: row for row in zoo_rows(in_chans=1)}
    assert rows["resnet18"]["features"] == 512
    assert 11_000_000 < rows["resnet18"]["params"] < 11_300_000  # 11.69 M at 3 channels, less the fc head
    assert rows["resnet18_slim"]["params"] < rows["resnet18"]["params"] / 10


def test_attention_rows_count_parameters_for_the_channels():
    rows = {row["name"]: row["params"] for row in attention_rows(128)}
    assert rows["none"] == 0
    assert rows["eca"] == 5  # a 1-d conv of kernel 5 for 128 channels (k = |log2(C)/2 + 1/2| odd)
    assert rows["cbam"] == 2 * 128 * 8 + 2 * 7 * 7 + 2  # channel MLP 128→8→128, 7×7 conv on 2 maps, its BN


def _whole(name: str, text: str) -> bool:
    """``name`` appears in ``text`` as a whole token (not cut, folded or ellipsized into a longer/shorter one)."""
    return re.search(rf"(?<![\w.…]){re.escape(name)}(?![\w…])", text) is not None


def test_models_list_to_a_pipe_prints_every_name_whole_however_narrow(monkeypatch):
    """``breastfusion models list | cat`` on a narrow terminal: no table to ellipsize, one tab-separated row each."""
    import breastfusion.cli.models as models_cli

    monkeypatch.setattr(models_cli, "console", Console(width=40))  # what a 40-column COLUMNS gives rich
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    for entry in ZOO.values():
        assert _whole(entry.name, result.output), entry.name
        assert _whole(entry.timm_name, result.output), entry.timm_name
    names = {line.split("\t")[0] for line in result.output.splitlines()}
    assert set(ZOO) <= names
    assert {"none", "eca", "cbam"} <= names
    assert "…" not in result.output


def test_models_list_on_a_narrow_terminal_keeps_names_whole(monkeypatch):
    """On a terminal the table stays, but the name column neither wraps nor ellipsizes."""
    import breastfusion.cli.models as models_cli

    screen = io.StringIO()
    monkeypatch.setattr(models_cli, "console", Console(file=screen, width=60, force_terminal=True, color_system=None))
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in ZOO:
        assert _whole(name, screen.getvalue()), name

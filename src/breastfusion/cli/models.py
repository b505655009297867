"""``breastfusion models …``: what the encoder zoo and the attention modules hold.

torch and timm are imported inside the verbs, so ``--help`` answers at once.
Models are built on PyTorch's ``meta`` device to count parameters, which
allocates no memory and initialises nothing (the whole zoo lists in seconds).
"""

from __future__ import annotations

from typing import Annotated, Sequence

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["app", "zoo_rows", "attention_rows"]

app = typer.Typer(help="The encoder zoo and the attention modules.", no_args_is_help=True, add_completion=False)
console = Console()


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n:,}"


def zoo_rows(in_chans: int = 1) -> list[dict[str, object]]:
    """One dict per zoo encoder: name, family, timm name, feature size, parameters (at ``in_chans``), note."""
    import torch

    from breastfusion.models.attention import count_parameters
    from breastfusion.models.encoders import create_encoder
    from breastfusion.models.zoo import ZOO

    rows = []
    for entry in ZOO.values():
        with torch.device("meta"):
            encoder = create_encoder(entry.name, in_chans=in_chans)
        rows.append({"name": entry.name, "family": entry.family, "timm": entry.timm_name,
                     "features": encoder.num_features, "params": count_parameters(encoder), "note": entry.note})
    return rows


def attention_rows(channels: int) -> list[dict[str, object]]:
    """One dict per attention kind: name, parameters at ``channels`` channels, timm module, paper."""
    from breastfusion.models.attention import ATTENTIONS, count_parameters, create_attention

    papers = {"none": "", "eca": "Wang et al., ECA-Net, CVPR 2020", "cbam": "Woo et al., CBAM, ECCV 2018"}
    rows = []
    for kind in ATTENTIONS:
        module = create_attention(kind, channels)
        rows.append({"name": kind, "params": count_parameters(module),
                     "module": f"{type(module).__module__}.{type(module).__name__}", "paper": papers[kind]})
    return rows


def _print_rows(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
                right: Sequence[str] = ()) -> None:
    """Print one listing so that every name one may type comes out whole.

    To a pipe or a file (``models list | cat``, ``| grep``) rich would size the table to 80 columns (or
    ``COLUMNS``) and ellipsize long names, so it prints ``# title``, then a tab-separated header and one
    tab-separated row per entry (``cut -f1`` gives the names). On a terminal it prints a table whose first
    column (the names) neither wraps nor shrinks below its longest entry; other columns fold instead.
    """
    if not console.is_terminal:
        console.file.write(f"# {title}\n" + "\n".join("\t".join(r) for r in [tuple(columns), *rows]) + "\n\n")
        console.file.flush()
        return
    table = Table(title=title)
    for i, column in enumerate(columns):
        if i == 0:
            table.add_column(column, no_wrap=True, min_width=max(len(r[0]) for r in [tuple(columns), *rows]))
        else:
            table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.callback()
def _models() -> None:
    """The encoder zoo and the attention modules."""


@app.command("list")
def list_models(
    channels: Annotated[int, typer.Option("--channels", min=1,
                                          help="Channels at which attention parameters are counted.")] = 128,
    in_chans: Annotated[int, typer.Option("--in-chans", min=1, help="Input channels of the encoders.")] = 1,
) -> None:
    """List the zoo's encoders (family, feature size, parameters) and the attention modules.

    Any other timm model name also works as ``encoder:``; these are the ones
    tested here. Attention goes after the final stage (``attention``) and, for
    ResNet, ConvNeXt, EfficientNet, DenseNet and MobileNetV3, optionally after
    every stage (``attention_stages: all`` in the branch config).
    """
    _print_rows(f"Encoders (zoo; parameters at {in_chans} input channel{'s' * (in_chans > 1)})",
                ("name", "family", "timm model", "features", "parameters", "note"),
                [(str(row["name"]), str(row["family"]), str(row["timm"]), str(row["features"]),
                  _millions(int(row["params"])), str(row["note"])) for row in zoo_rows(in_chans)],
                right=("features", "parameters"))
    _print_rows(f"Attention modules (parameters at {channels} channels)",
                ("name", "parameters", "timm module", "paper"),
                [(str(row["name"]), f"{row['params']:,}", str(row["module"]), str(row["paper"]))
                 for row in attention_rows(channels)],
                right=("parameters",))

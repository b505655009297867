"""Class-activation heatmaps (pytorch-grad-cam) for one image of one lesion in a multimodal network.

The network reads a whole lesion (every view of every modality, the clinical
row). To explain one image, :class:`OneImageModel` turns the network into a
function of that image alone: the lesion's other views and other modalities
are encoded once and held fixed, so the heatmap answers "which pixels of this
image moved *this* prediction". pytorch-grad-cam then runs on it unchanged.

The target layer is chosen per architecture from timm's ``feature_info``: the
deepest stage whose map is still at least ``min_side`` pixels wide at the
branch's input size (a 2×2 map cannot point at a lesion), or the encoder's
final, attended map when that one is wide enough. Token maps (ViTs) and
channels-last maps are reshaped to (N, C, h, w). Any module can be named
instead (``target_layer="backbone.layer3"``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from breastfusion.models.encoders import ImageEncoder
from breastfusion.models.network import MultimodalNet, SeedEnsemble, network_members

__all__ = ["CAM_METHODS", "FINAL", "OneImageModel", "EnsembleImageModel", "TargetLayer", "encode_views",
           "image_model", "find_target_layer", "find_target_layers", "compute_cams"]

#: Heatmap methods by CLI name.
CAM_METHODS: dict[str, type] = {"scorecam": ScoreCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
#: Name of the encoder's final (attended) feature map as a target layer.
FINAL = "final"


class OneImageModel(nn.Module):
    """The network as a function of one image of one lesion; everything else held fixed.

    Args:
        net: a trained :class:`~breastfusion.models.network.MultimodalNet` (eval mode).
        batch: one lesion, prepared (normalised floats): the keys the network reads, batch size 1.
        modality: the image modality explained.
        slot: the view slot of that modality replaced by the input.
        branch_outputs: the other branches' outputs on ``batch`` when already computed
            (several images of one lesion share them).
        view_features: :func:`encode_views` of ``modality`` when already computed.

    ``forward(x (N, C, H, W)) -> logits (N, 1)``: row i is the network's logit
    for the lesion with image ``slot`` replaced by ``x[i]``. With ``x`` the
    lesion's own image it equals ``net(batch)``.
    """

    def __init__(self, net: MultimodalNet, batch: dict[str, torch.Tensor], modality: str, slot: int, *,
                 branch_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 view_features: torch.Tensor | None = None):
        super().__init__()
        if modality not in net.modalities or modality == "clinical":
            raise ValueError(f"modality should be an image modality of the network {list(net.modalities)}, "
                             f"got {modality!r}")
        views = batch[f"{modality}_views"][0]
        if not bool(views[slot]):
            raise ValueError(f"{modality} view slot {slot} holds no image for this lesion")
        self.net, self.modality, self.slot = net, modality, slot
        self.image = batch[modality][0, slot][None]  # (1, C, H, W): the image explained
        self.encoder: ImageEncoder = net.branches[modality].encoder
        with torch.no_grad():
            if branch_outputs is None:
                branch_outputs = {m: branch(batch) for m, branch in net.branches.items() if m != modality}
            self.fixed = {m: tuple(t.detach() for t in out) for m, out in branch_outputs.items() if m != modality}
            if view_features is None:
                view_features = encode_views(net, batch, modality)
            others = views.clone()
            others[slot] = False
            # The branch mean-pools its present views: the other views' features are a fixed sum.
            self.other_sum = view_features[others].sum(0, keepdim=True)
            self.n_views = int(views.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pooled = (self.encoder(x) + self.other_sum) / self.n_views  # (N, F)
        outputs = {m: (feats.expand(n, -1), present.expand(n)) for m, (feats, present) in self.fixed.items()}
        outputs[self.modality] = (pooled, torch.ones(n, dtype=torch.bool, device=x.device))
        return self.net.fusion(outputs).unsqueeze(1)  # (N, 1)


class EnsembleImageModel(nn.Module):
    """A seed ensemble as a function of one image of one lesion: its members' :class:`OneImageModel` s, their
    logits averaged (the ensemble's own prediction). :func:`compute_cams` gives it the mean of its members'
    heatmaps of one class, as a bundle's heatmap is the mean over its fold networks."""

    def __init__(self, members: list[OneImageModel]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble image model needs at least one member")
        self.members = nn.ModuleList(members)
        self.image, self.modality, self.slot = members[0].image, members[0].modality, members[0].slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(0)  # (N, 1)


def image_model(net: MultimodalNet | SeedEnsemble, batch: dict[str, torch.Tensor], modality: str, slot: int, *,
                branch_outputs: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None,
                view_features: list[torch.Tensor] | None = None) -> OneImageModel | EnsembleImageModel:
    """``net`` as a function of one image: a :class:`OneImageModel` for one network, an
    :class:`EnsembleImageModel` for a seed ensemble. ``branch_outputs`` and ``view_features``, when given,
    hold one entry per single network (:func:`~breastfusion.models.network.network_members`)."""
    members = network_members(net)
    models = [OneImageModel(member, batch, modality, slot,
                            branch_outputs=None if branch_outputs is None else branch_outputs[j],
                            view_features=None if view_features is None else view_features[j])
              for j, member in enumerate(members)]
    return models[0] if isinstance(net, MultimodalNet) else EnsembleImageModel(models)


@torch.no_grad()
def encode_views(net: MultimodalNet, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
    """Encoder features of every view slot of one lesion: (V, F), zeros in empty slots."""
    images, views = batch[modality][0], batch[f"{modality}_views"][0]
    encoder = net.branches[modality].encoder
    out = torch.zeros(len(views), encoder.num_features, dtype=images.dtype)
    if views.any():
        out[views] = encoder(images[views]).to(out.dtype)
    return out


@dataclass
class TargetLayer:
    """Where the heatmap is read: a module of the encoder and how to shape its output.

    Attributes:
        name: dotted path inside the encoder (``"final"`` for the attended last map).
        module: the module.
        reshape: turns the module's output into (N, C, h, w), or ``None`` when it already is.
        side: the map's width at the probed input size.
    """

    name: str
    module: nn.Module
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    side: int


def _reshape_for(output: torch.Tensor, channels: int | None, prefix_tokens: int):
    if output.ndim == 3:  # tokens (N, T, C): drop class/register tokens, fold the rest into a square grid
        side = int(round((output.shape[1] - prefix_tokens) ** 0.5))
        if side * side != output.shape[1] - prefix_tokens:
            raise ValueError(f"cannot fold {output.shape[1]} tokens ({prefix_tokens} prefix) into a square map")

        def tokens(t: torch.Tensor) -> torch.Tensor:
            t = t[:, prefix_tokens:]
            return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

        return tokens, side
    if output.ndim == 4 and channels is not None and output.shape[1] != channels and output.shape[-1] == channels:
        return (lambda t: t.permute(0, 3, 1, 2)), output.shape[1]  # channels last (N, h, w, C)
    if output.ndim == 4:
        return None, output.shape[-1]
    raise ValueError(f"the target layer gives a {output.ndim}-d output {tuple(output.shape)}; expected a "
                     "feature map (N, C, h, w), (N, h, w, C) or tokens (N, T, C)")


def find_target_layer(encoder: ImageEncoder, image_size: int, *, name: str | None = None,
                      min_side: int = 4, in_chans: int = 1) -> TargetLayer:
    """Choose (or look up) the layer a CAM reads, for any timm encoder.

    Args:
        encoder: the branch's encoder.
        image_size: the branch's input side in pixels.
        name: a dotted module path inside the encoder (e.g. ``"backbone.layer3"``),
            ``"final"`` for the attended last map, or ``None`` to choose automatically.
        min_side: automatic choice: the deepest stage whose map is at least this wide.
        in_chans: input channels (to probe the layer's output shape).

    Raises:
        ValueError: ``name`` is not a module of the encoder, or its output is not a map.
    """
    backbone = encoder.backbone
    if name is None:
        name = FINAL
        stages = [info for info in getattr(backbone, "feature_info", []) if "module" in info]
        fitting = [info for info in stages if image_size / info["reduction"] >= min_side]
        if fitting and fitting[-1] is not stages[-1] and image_size / stages[-1]["reduction"] < min_side:
            name = f"backbone.{fitting[-1]['module']}"
    if name == FINAL:
        module, channels = encoder.attention, getattr(encoder, "map_features", encoder.num_features)
    else:
        try:
            module = encoder.get_submodule(name)
        except AttributeError:
            stages = [f"backbone.{i['module']}" for i in getattr(backbone, "feature_info", []) if "module" in i]
            raise ValueError(f"target layer {name!r} is not a module of the encoder; try {FINAL!r} or one of "
                             f"its stages {stages}") from None
        channels = next((i["num_chs"] for i in getattr(backbone, "feature_info", [])
                         if f"backbone.{i.get('module')}" == name), None)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder(torch.zeros(1, in_chans, image_size, image_size))
    finally:
        handle.remove()
        encoder.train(was_training)
    if not seen or not isinstance(seen[0], torch.Tensor):
        raise ValueError(f"target layer {name!r} gives no tensor output in the encoder's forward pass")
    reshape, side = _reshape_for(seen[0], channels, getattr(backbone, "num_prefix_tokens", 0))
    return TargetLayer(name=name, module=module, reshape=reshape, side=int(side))


def find_target_layers(model: OneImageModel | EnsembleImageModel, *, name: str | None = None,
                       min_side: int = 4) -> list[TargetLayer]:
    """:func:`find_target_layer` of each single network in ``model`` (one for a :class:`OneImageModel`)."""
    members = model.members if isinstance(model, EnsembleImageModel) else [model]
    image = model.image
    return [find_target_layer(member.encoder, image.shape[-1], name=name, min_side=min_side,
                              in_chans=image.shape[1]) for member in members]


def compute_cams(
    model: OneImageModel | EnsembleImageModel,
    methods: tuple[str, ...] = ("scorecam",),
    *,
    target_layer: TargetLayer | list[TargetLayer] | None = None,
    target_class: int | None = None,
    batch_size: int = 128,
) -> tuple[dict[str, np.ndarray], float]:
    """Heatmaps of one image of one lesion, one per method.

    Args:
        model: the network as a function of the image (:class:`OneImageModel`), or a seed ensemble's
            (:class:`EnsembleImageModel`: the mean of its members' heatmaps, each of the class the ensemble
            explains).
        methods: names from :data:`CAM_METHODS`.
        target_layer: from :func:`find_target_layer` (default: chosen automatically); for an ensemble, one per
            member (:func:`find_target_layers`).
        target_class: 1 explains the malignant logit, 0 its negative (evidence for benign);
            ``None`` explains the predicted class.
        batch_size: Score-CAM's masked copies per forward pass.

    Returns:
        ``({method: float32 (H, W) in [0, 1]}, the lesion's logit)``.

    Raises:
        ValueError: unknown method, or target layers that are not one per network.
    """
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise ValueError(f"unknown CAM method(s) {unknown}; expected names from {list(CAM_METHODS)}")
    model.eval()
    image = model.image
    members = list(model.members) if isinstance(model, EnsembleImageModel) else [model]
    if target_layer is None:
        layers = find_target_layers(model)
    else:
        layers = target_layer if isinstance(target_layer, list) else [target_layer]
    if len(layers) != len(members):
        raise ValueError(f"{len(layers)} target layer(s) for {len(members)} network(s)")
    with torch.no_grad():
        logit = float(model(image)[0, 0])
    category = (1 if logit >= 0 else 0) if target_class is None else int(target_class)
    per_member = [_member_cams(member, methods, layer, category, batch_size) for member, layer in zip(members, layers)]
    return {method: np.mean([maps[method] for maps in per_member], axis=0).astype(np.float32)
            for method in methods}, logit


def _member_cams(model: OneImageModel, methods: tuple[str, ...], target_layer: TargetLayer, category: int,
                 batch_size: int) -> dict[str, np.ndarray]:
    """One network's heatmaps of ``category`` (pytorch-grad-cam), float32 in [0, 1]."""
    image = model.image
    targets = [BinaryClassifierOutputTarget(category)]
    maps = {}
    for method in methods:
        with CAM_METHODS[method](model=model, target_layers=[target_layer.module],
                                 reshape_transform=target_layer.reshape) as cam:
            cam.batch_size = batch_size
            # Score-CAM draws a tqdm bar per image; keep the console for our own progress.
            with contextlib.redirect_stderr(io.StringIO()):
                heat = cam(input_tensor=image, targets=targets)[0]
        maps[method] = np.nan_to_num(heat.astype(np.float32)).clip(0, 1)
    return maps

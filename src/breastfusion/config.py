"""Experiment configuration: one YAML file, validated by pydantic, never executed.

Defaults suit a real cohort; the embedded demo changes a few
(``breastfusion.demo.demo_config``), and ``configs/demo.yaml`` spells it out. Unknown keys are errors, and a
bad value is reported with its dotted key, what was given and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from breastfusion.data.manifest import MODALITIES

__all__ = [
    "ConfigError",
    "ImageBranchConfig",
    "ClinicalBranchConfig",
    "ModelConfig",
    "TrainingConfig",
    "CVConfig",
    "SyntheticConfig",
    "ExperimentConfig",
    "load_config",
    "dump_config",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names each key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageBranchConfig(_Strict):
    """An image branch: a timm encoder, its attention and the input size."""

    encoder: str = Field("resnet18_slim", description="a zoo name (`breastfusion models list`) or any timm model")
    encoder_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to timm.create_model")
    attention: Literal["none", "eca", "cbam"] = "none"
    view_pooling: Literal["mean", "attention"] = Field("mean", description="how the views of a lesion (CC + MLO, "
                                                      "several frames) are pooled")
    attention_stages: Literal["last", "all"] = Field("last", description="attention after the last stage only, "
                                                     "or after every stage")
    weights: Path | None = None
    image_size: int = Field(64, ge=16, le=1024)
    preprocess: dict[str, Any] = Field(default_factory=dict, description="overrides of the modality's "
                                       "preprocessing (breastfusion.data.preprocess: crop, chest_wall, normalise, "
                                       "roi, ...)")


class ClinicalBranchConfig(_Strict):
    """The clinical branch. Column types are inferred unless listed here."""

    numeric: list[str] | None = None
    categorical: list[str] | None = None
    binary: list[str] | None = None
    hidden: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class ModelConfig(_Strict):
    mammography: ImageBranchConfig = ImageBranchConfig()
    ultrasound: ImageBranchConfig = ImageBranchConfig()
    clinical: ClinicalBranchConfig = ClinicalBranchConfig()
    fusion: Literal["concat", "gated", "late"] = "concat"
    fusion_hidden: int = Field(64, ge=1, description="common feature size of gated fusion")
    late_weights: Literal["learned", "mean"] = "learned"
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    init_from_single: bool = Field(
        True, description="start a multimodal variant's branches from the same fold's single-modality "
        "variants (trained on the same training subjects), then fine-tune jointly")


class TrainingConfig(_Strict):
    epochs: int = Field(14, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    augment: bool = True
    finetune_epochs: int = Field(5, ge=1, description="epochs of a multimodal variant whose branches start "
                                 "from single-modality variants")
    finetune_lr_scale: float = Field(0.3, gt=0, le=1)
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: class-aware sampling, each class drawn equally often")
    class_weights: bool = Field(False, description="weight the loss by inverse class frequency")
    modality_dropout: float = Field(0.0, ge=0, lt=1, description="chance to hide each present modality of a "
                                    "training sample (never all of them), so the network learns to predict "
                                    "from any subset")
    val_fraction: float = Field(0.0, ge=0, le=0.5, description="share of the training subjects held out "
                                "(grouped by subject) for early stopping; 0 trains on all for `epochs`")
    patience: int = Field(5, ge=1, description="early-stopping patience in epochs (with val_fraction > 0)")
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"


class CVConfig(_Strict):
    n_splits: int = Field(5, ge=2)
    seed: int = 0
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for confidence intervals")


class SyntheticConfig(_Strict):
    """The synthetic cohort (used when no manifest is given)."""

    n_subjects: int = Field(600, ge=10)
    prevalence: float = Field(0.42, gt=0, lt=1)
    us_frames: int = Field(1, ge=1)
    missing_rate: float = Field(0.0, ge=0, lt=1)
    image_px: int = Field(128, ge=32)
    seed: int = 0


def _default_variants() -> dict[str, list[str]]:
    return {
        "mammography": ["mammography"],
        "ultrasound": ["ultrasound"],
        "clinical": ["clinical"],
        "fused": ["mammography", "ultrasound", "clinical"],
    }


class ExperimentConfig(_Strict):
    """One experiment: data, variants (modality subsets), model, training, cross-validation."""

    name: str = "experiment"
    manifest: Path | None = None
    cache: bool = Field(True, description="keep preprocessed images in the on-disk cache ($BREASTFUSION_CACHE)")
    exclude_unreadable: bool = Field(False, description="leave unreadable images out (recorded in the run) "
                                     "instead of stopping")
    synthetic: SyntheticConfig = SyntheticConfig()
    variants: dict[str, list[str]] = Field(default_factory=_default_variants)
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    cv: CVConfig = CVConfig()

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if not value:
            raise ValueError("at least one variant is needed")
        for name, modalities in value.items():
            unknown = [m for m in modalities if m not in MODALITIES]
            if unknown or not modalities:
                raise ValueError(f"variant {name!r}: modalities {unknown or modalities} not allowed; "
                                 f"expected a non-empty list from {list(MODALITIES)}")
        return value


def _format(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, **overrides: Any) -> ExperimentConfig:
    """Read and validate an experiment YAML (``None``: the demo defaults).

    Args:
        path: YAML file.
        **overrides: top-level keys replacing the file's (for CLI flags).

    Raises:
        ConfigError: unreadable YAML, unknown key or bad value (named by dotted key).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def dump_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (every key, defaults included)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

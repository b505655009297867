"""Experiment configuration: one YAML file, validated by pydantic, never executed.

Defaults suit a real cohort; the embedded demo changes a few
(``breastfusion.experiment.demo.demo_config``), and ``configs/demo.yaml`` spells it out. Unknown keys are errors, and a
bad value is reported with its dotted key, what was given and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator

from breastfusion.data.manifest import MODALITIES

__all__ = [
    "ConfigError",
    "format_validation_error",
    "LocaliserConfig",
    "ImageBranchConfig",
    "ClinicalBranchConfig",
    "ModelConfig",
    "TrainingConfig",
    "CVConfig",
    "SyntheticConfig",
    "ExecutionConfig",
    "EvaluationConfig",
    "Stage2Config",
    "VariantConfig",
    "AblationConfig",
    "STAGE2_LEARNERS",
    "ExperimentConfig",
    "load_config",
    "dump_config",
    "select_variants",
    "deep_merge",
    "reference_variant",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names each key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocaliserConfig(_Strict):
    """The lesion localiser of ``preprocess.roi: predicted`` (:mod:`breastfusion.models.localiser`): a small U-Net,
    from scratch, fitted in each fold on the training images' lesion masks, that boxes the lesion of every
    held-out (and, in a bundle, every new) image so the branch sees the same crop a reader's mask gives."""

    encoder: str = Field("mobilenetv3_small_100", description="the U-Net's timm encoder (random initialisation)")
    image_size: int = Field(96, ge=32, le=512, description="side of the whole-frame input")
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.002, gt=0)
    batch_size: int = Field(16, ge=2)
    weight_decay: float = Field(0.0001, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1, description="lesion probability above which a pixel joins the box")
    decoder_channels: list[int] = Field([64, 32, 16, 16, 8], min_length=5, max_length=5)
    augment: Literal["flip", "affine"] = Field("flip", description="training augmentation: left-right flips and "
                                               "gain, or those and a random zoom, rotation and shift (affine)")
    views: Literal["crop", "crop_and_frame"] = Field(
        "crop", description="what the branch sees of each image: the crop only, or the crop and the whole frame as "
        "two views of the lesion (pooled like any views), so a box that missed the lesion still leaves the frame")
    fit_crops: Literal["reader", "cross_fitted"] = Field(
        "reader", description="how the images the networks are fitted on are cropped: to the reader's mask, or "
        "(cross_fitted) to the box of a localiser fitted on the other fitting images (cross_fit_folds parts, "
        "grouped by subject), so the networks learn from crops with the errors held-out crops have")
    cross_fit_folds: int = Field(2, ge=2, le=10, description="parts the fitting images are split into for "
                                 "fit_crops: cross_fitted (one extra localiser per part and fold)")

    @property
    def fits_per_fold(self) -> int:
        """Localisers fitted in each fold: the fold's own, and one per part with ``fit_crops: cross_fitted``."""
        return 1 + (self.cross_fit_folds if self.fit_crops == "cross_fitted" else 0)


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
    mask_loss: float = Field(0.0, ge=0, description="weight of an auxiliary lesion-mask loss: a 1x1 convolution "
                             "on the encoder's final feature map learns where the lesion is, from the training "
                             "images' masks (manifest mask_path; images without one add nothing). Held-out "
                             "images' masks are never read; prediction does not use the head. 0: off")
    preprocess: dict[str, Any] = Field(default_factory=dict, description="overrides of the modality's "
                                       "preprocessing (breastfusion.data.preprocess: crop, chest_wall, normalise, "
                                       "roi, ...)")
    localiser: LocaliserConfig | None = Field(None, description="settings of the lesion localiser that "
                                              "preprocess.roi: predicted trains (defaults when that roi is set)")

    @model_validator(mode="before")
    @classmethod
    def _localiser_for_predicted_roi(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        predicted = isinstance(data.get("preprocess"), dict) and data["preprocess"].get("roi") == "predicted"
        if predicted and data.get("localiser") is None:
            return {**data, "localiser": {}}
        if not predicted and data.get("localiser") is not None:
            raise ValueError("localiser is set, but preprocess.roi is not 'predicted'; set preprocess: "
                             "{roi: predicted} to crop to the localiser's box, or drop localiser")
        return data


class ClinicalBranchConfig(_Strict):
    """The clinical branch. Column types are inferred unless listed here."""

    numeric: list[str] | None = None
    categorical: list[str] | None = None
    binary: list[str] | None = None
    hidden: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    score_model: Literal["logistic", "gradient_boosting"] = Field(
        "logistic", description="the clinical learner of `fusion: score` (regularisation tuned by an inner CV of "
        "the training subjects)")


class ModelConfig(_Strict):
    mammography: ImageBranchConfig = ImageBranchConfig()
    ultrasound: ImageBranchConfig = ImageBranchConfig()
    clinical: ClinicalBranchConfig = ClinicalBranchConfig()
    fusion: Literal["concat", "gated", "late", "score"] = Field(
        "concat", description="concat / gated / late: one network trained jointly; score: the image network's "
        "probability averaged with a cross-validated clinical learner's (breastfusion.models.score_fusion)")
    fusion_hidden: int = Field(64, ge=1, description="common feature size of gated fusion")
    late_weights: Literal["learned", "mean"] = "learned"
    fusion_null_slot: bool = Field(False, description="gated fusion: add a learned, always-present 'no "
                                   "information' slot the gates can choose instead of an uninformative modality")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    init_from_single: bool = Field(
        True, description="start a multimodal variant's branches from the same fold's single-modality "
        "variants (trained on the same training subjects), then fine-tune jointly")

    @model_validator(mode="after")
    def _localiser_for_ultrasound_only(self) -> "ModelConfig":
        if self.mammography.preprocess.get("roi") == "predicted":
            # a mammogram's frame is mirrored and set against its chest wall; the localiser maps boxes back from a
            # centred, unmirrored frame only
            raise ValueError("mammography.preprocess.roi: predicted is not supported (the lesion localiser is for "
                             "ultrasound frames); use roi: mask or box for mammography")
        return self


class TrainingConfig(_Strict):
    epochs: int = Field(14, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear learning-rate warm-up before the cosine decay")
    tta: Literal["none", "hflip"] = Field("none", description="test-time augmentation: hflip averages the logits "
                                          "of each image and its mirror image (validation, calibration, test, "
                                          "bundles)")
    seed: int = 0
    seeds: int = Field(1, ge=1, le=20, description="networks per fold trained from different seeds (member j: the "
                       "fold seed + 10^7 j), their logits averaged: a seed ensemble (K x the training time). "
                       "Stage 2 needs a single network and refuses seeds > 1; explanations combine the members")
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    augment: bool = True
    augment_zoom: float = Field(0.1, ge=0, lt=1, description="training augmentation's random scale change, ± this "
                                "fraction (0.1: 90% to 110%)")
    augment_rotation: float = Field(10.0, ge=0, le=180, description="training augmentation's random rotation, ± "
                                    "degrees")
    augment_shift: float = Field(0.08, ge=0, le=0.5, description="training augmentation's random shift, ± this "
                                 "fraction of the image side")
    mixup: float = Field(0.0, ge=0, description="mixup of training batches: the Beta(mixup, mixup) concentration "
                         "of the blend weight (breastfusion.data.transforms.mix_batch); 0: off")
    ema_epochs: float = Field(0.0, ge=0, description="predict with an exponential moving average of the weights "
                              "(updated every step, buffers included) whose time constant is this many epochs; 0: "
                              "the final weights")
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
    num_workers: int | Literal["auto"] = Field(0, description="DataLoader worker processes; auto: 0 on the CPU, "
                                               "a few per GPU (breastfusion.training.device); never changes the "
                                               "numbers, only the speed")


class CVConfig(_Strict):
    split_column: str | None = Field(None, description="train on the dataset's own split instead of "
                                     "cross-validating: the manifest column whose values are train / val / test "
                                     "(e.g. BreastMNIST's `split`); val (if any) serves early stopping and "
                                     "thresholds, test gives the figures")
    training_only_column: str | None = Field(
        None, description="pool another cohort into training: the manifest column (1 / true / yes) marking lesions "
        "that join every fold's training set and are never tested (written by `breastfusion data pool`); the "
        "folds, and every figure, are those of the other lesions alone")
    n_splits: int = Field(5, ge=2)
    seed: int = 0
    repeats: int = Field(1, ge=1, description="repeated cross-validation: each repeat reshuffles the folds "
                         "(seed + repeat); headline metrics are reported as mean ± sd across repeats")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for confidence intervals")


class SyntheticConfig(_Strict):
    """The synthetic cohort (used when no manifest is given)."""

    n_subjects: int = Field(600, ge=10)
    prevalence: float = Field(0.42, gt=0, lt=1)
    us_frames: int = Field(1, ge=1)
    missing_rate: float = Field(0.0, ge=0, lt=1)
    image_px: int = Field(128, ge=32)
    seed: int = 0


class ExecutionConfig(_Strict):
    """Where the (network, fold) trainings run; never part of a network's key (it decides speed, not weights)."""

    executor: Literal["local", "ray"] = Field("local", description="local: one process, in order; ray: each "
                                              "(network, fold) is a Ray task (pip install 'breastfusion[ray]')")
    address: str | None = Field(None, description="Ray cluster to join (`auto`, or ray://HOST:10001); none: "
                                "$RAY_ADDRESS, else a local cluster on this machine")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs each training task asks Ray for")
    gpus_per_task: float = Field(0.0, ge=0, description="GPUs each training task asks Ray for (fractions share one)")
    max_retries: int = Field(2, ge=0, description="times Ray reruns a failed or lost task (it resumes from the "
                             "task's last epoch checkpoint)")


class EvaluationConfig(_Strict):
    """How out-of-fold outputs become subject-level figures; everything here is fitted on training folds only."""

    aggregation: Literal["mean", "max", "learned"] = Field(
        "mean", description="lesion/image outputs to one subject score: mean, max, or a logistic model on "
        "(mean, max, count) fitted on each fold's calibration scores")
    recalibration: Literal["none", "platt", "isotonic"] = Field(
        "none", description="recalibrate each fold's test probabilities with a map fitted on its calibration scores")
    target_sensitivity: float = Field(0.98, gt=0.5, lt=1, description="rule-out operating point")
    conformal_alpha: float = Field(0.10, gt=0, lt=0.5, description="conformal miscoverage rate")


STAGE2_LEARNERS = ("stacking", "logistic", "svm", "random_forest", "extra_trees")


class Stage2Config(_Strict):
    """MPM-MU stage 2: scikit-learn learners on the stage-1 network's deep features (training folds only)."""

    features: Literal["fused", "fused+branches"] = Field(
        "fused+branches", description="the fusion head's input, with each branch's own features for gated / late "
        "fusion (concat's head input already is the branch features, grouped by branch)")
    inner_folds: int = Field(5, ge=2, description="inner cross-validation of the stacking ensemble, grouped by "
                             "subject")
    n_estimators: int = Field(200, ge=10, description="trees of the random forest and extra-trees learners")
    meta_hidden: int = Field(16, ge=1, description="hidden units of the MLP meta-learner")
    seed: int = 0


class VariantConfig(_Strict):
    """One variant: a modality subset, optional changes to the model, and an optional stage-2 learner.

    In YAML a plain list (``fused: [mammography, ultrasound]``) is a variant with no changes.
    """

    modalities: list[str]
    model: dict[str, Any] = Field(default_factory=dict, description="overrides of the top-level `model` for this "
                                  "variant (nested keys, e.g. {mammography: {attention: none}})")
    stage2: Literal["none", "stacking", "logistic", "svm", "random_forest", "extra_trees"] = Field(
        "none", description="none: the stage-1 network's own head; else a stage-2 learner on its deep features")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        return {"modalities": value} if isinstance(value, (list, tuple)) else value

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODALITIES]
        if unknown or not value:
            raise ValueError(f"modalities {unknown or value} not allowed; expected a non-empty list from "
                             f"{list(MODALITIES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"modalities {value} repeat a modality")
        return value


class AblationConfig(_Strict):
    """The grid `breastfusion ablate` runs: each axis changes one thing of the reference (full) variant.

    Axes are one-factor-at-a-time, as ablation tables in papers are: every listed value that differs from the
    reference gives one variant (``ultrasound.attention=none``, ``stage2=svm``, ...).
    """

    reference: str | None = Field(None, description="the full variant (default: the one with most modalities)")
    modalities: list[list[str]] = Field(default_factory=list, description="modality subsets to run alone")
    attention: dict[Literal["mammography", "ultrasound"], list[Literal["none", "eca", "cbam"]]] = Field(
        default_factory=dict, description="attention values to try per image branch")
    fusion: list[Literal["concat", "gated", "late", "score"]] = Field(default_factory=list)
    encoder: dict[Literal["mammography", "ultrasound"], list[str]] = Field(
        default_factory=dict, description="encoders to try per image branch")
    stage2: list[Literal["none", "stacking", "logistic", "svm", "random_forest", "extra_trees"]] = Field(
        default_factory=list, description="stage-2 learners to try on the reference network (none = its head)")


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
    variants: dict[str, VariantConfig] = Field(default_factory=_default_variants)
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    cv: CVConfig = CVConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    stage2: Stage2Config = Stage2Config()
    ablation: AblationConfig = AblationConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        if not value:
            raise ValueError("at least one variant is needed")
        for name in value:
            if not name or any(c in name for c in '/\\:*?"<>|') or name.startswith("."):
                raise ValueError(f"variant name {name!r} is also a folder name: use letters, digits, '.', '=', "
                                 "'_', '+', '-'")
        return value

    @model_validator(mode="after")
    def _check_variant_models(self) -> "ExperimentConfig":
        for name in self.variants:
            self.variant_model(name)  # raises on a bad override
            if self.training.seeds > 1 and self.variant(name).stage2 != "none":
                raise ValueError(f"variant {name!r}: stage2 {self.variant(name).stage2!r} learns from one "
                                 f"network's deep features, but training.seeds is {self.training.seeds} (a seed "
                                 "ensemble); use training.seeds: 1 or stage2: none")
        return self

    @field_serializer("variants")
    def _short_variants(self, value: dict[str, VariantConfig]) -> dict[str, Any]:
        """A variant with no changes is written back as its plain modality list."""
        out = {}
        for name, v in value.items():
            v = VariantConfig.model_validate(v)
            out[name] = list(v.modalities) if not v.model and v.stage2 == "none" else v.model_dump(mode="json")
        return out

    @property
    def n_folds(self) -> int:
        """Networks trained per variant and repeat: one on a dataset's own split, else ``cv.n_splits``."""
        return 1 if self.cv.split_column is not None else self.cv.n_splits

    def modalities(self, variant: str) -> tuple[str, ...]:
        """The modalities of ``variant`` (KeyError naming the known variants when unknown)."""
        return tuple(self.variant(variant).modalities)

    def variant(self, name: str) -> VariantConfig:
        """The variant ``name`` (also when ``variants`` was replaced by ``model_copy`` with plain lists)."""
        if name not in self.variants:
            raise KeyError(f"unknown variant {name!r}; expected one of {list(self.variants)}")
        return VariantConfig.model_validate(self.variants[name])

    def variant_model(self, variant: str) -> ModelConfig:
        """The model of ``variant``: the top-level ``model`` with the variant's overrides merged in."""
        overrides = self.variant(variant).model
        if not overrides:
            return self.model
        merged = deep_merge(self.model.model_dump(), overrides)
        try:
            return ModelConfig.model_validate(merged)
        except ValidationError as exc:
            raise ValueError(f"variant {variant!r}: bad model override: {exc}") from None


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``changes`` merged in, nested dicts key by key (``base`` is not modified)."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def reference_variant(config: ExperimentConfig) -> str:
    """The full model every variant is compared with: ``ablation.reference`` when it names a variant, else the
    first variant with the most modalities."""
    if config.ablation.reference in config.variants:
        return config.ablation.reference
    return max(config.variants, key=lambda name: len(config.modalities(name)))


def format_validation_error(error: ValidationError, source: str) -> str:
    """A pydantic error as one line per bad key (dotted path, message, the value given), headed by ``source``."""
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The YAML file at ``path`` as a mapping of keys (an empty file: ``{}``).

    Raises:
        ConfigError: invalid YAML, or a top level that is not a mapping (the file named).
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def first_difference(a: BaseModel, b: BaseModel) -> str | None:
    """The first top-level field whose value differs between two settings of one kind (``None``: equal)."""
    dump_a, dump_b = a.model_dump(), b.model_dump()
    return next((key for key in dump_a if dump_a[key] != dump_b[key]), None)


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
        data = read_yaml_mapping(path)
    if "members" in data:
        raise ConfigError(f"{source} is an ensemble recipe (it lists member configs under `members`), not an "
                          "experiment config: `breastfusion run` fits it, or from Python "
                          "breastfusion.load_ensemble_recipe and breastfusion.run_ensemble_recipe")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def select_variants(config: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """``config`` with only the variants ``names``, in that order.

    Raises:
        ConfigError: a name that is not a variant (the message lists the config's variants).
    """
    unknown = [n for n in names if n not in config.variants]
    if unknown or not names:
        raise ConfigError(f"--variants: {unknown or names} not in the config; expected names from "
                          f"{list(config.variants)}")
    reference = config.ablation.reference if config.ablation.reference in names else None
    return config.model_copy(update={"variants": {n: config.variant(n) for n in names},
                                     "ablation": config.ablation.model_copy(update={"reference": reference})})


def dump_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (every key, defaults included)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

"""Experiment configuration: validated, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from breastfusion.config import ConfigError, dump_config, load_config
from breastfusion.experiment.demo import demo_config

REPO = Path(__file__).resolve().parents[1]


def test_configs_demo_yaml_is_the_demo():
    assert load_config(REPO / "configs" / "demo.yaml") == demo_config()
    assert demo_config(quick=True) != demo_config()


def test_round_trip(tmp_path):
    config = load_config(None, training={"epochs": 3}, variants={"us": ["ultrasound"]})
    dump_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize("text, pattern", [
    ("trainig: {epochs: 3}", r"trainig: Extra inputs are not permitted"),
    ("training: {epochs: 0}", r"training.epochs: Input should be greater than or equal to 1"),
    ("model: {ultrasound: {attention: se}}", r"model.ultrasound.attention: Input should be 'none', 'eca' or 'cbam'"),
    ("variants: {x: [mri]}", r"variants\.x\.modalities: .*modalities \['mri'\] not allowed"),
    ("[1, 2]", r"expected a mapping"),
    ("training: {epochs: [", r"not valid YAML"),
])
def test_bad_config_names_the_key(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)


def test_fusion_null_slot_reaches_the_gated_fusion_and_the_network_key():
    from breastfusion.experiment.crossval import network_spec
    from breastfusion.models.network import build_network

    plain = load_config(None, model={"fusion": "gated", "ultrasound": {"encoder": "test_resnet"}})
    slotted = load_config(None, model={"fusion": "gated", "fusion_null_slot": True,
                                       "ultrasound": {"encoder": "test_resnet"}})
    assert build_network(("ultrasound", "clinical"), slotted.model, 4).fusion.null is not None
    assert build_network(("ultrasound", "clinical"), plain.model, 4).fusion.null is None
    assert network_spec(plain, "fused").key != network_spec(slotted, "fused").key


@pytest.mark.parametrize("setting", [{"augment_zoom": 0.25}, {"augment_rotation": 15.0}, {"augment_shift": 0.1},
                                     {"mixup": 0.4}])
def test_augmentation_ranges_and_mixup_enter_the_network_key_only_when_changed(setting):
    """Networks trained before these settings existed keep their keys (the defaults are left out of the key,
    test_localised_roi checks the shipped configs' keys); a changed value is a different network."""
    from breastfusion.experiment.crossval import network_spec

    base = load_config(None, model={"ultrasound": {"encoder": "test_resnet"}})
    changed = load_config(None, model={"ultrasound": {"encoder": "test_resnet"}}, training=setting)
    same = load_config(None, model={"ultrasound": {"encoder": "test_resnet"}},
                       training={k: type(v)(base.training.model_dump()[k]) for k, v in setting.items()})
    assert network_spec(changed, "ultrasound").key != network_spec(base, "ultrasound").key
    assert network_spec(same, "ultrasound").key == network_spec(base, "ultrasound").key

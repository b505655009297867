"""Gated fusion's optional no-information slot: masking still holds, and an empty input gets the slot's output."""

from __future__ import annotations

import torch

from breastfusion.models.fusion import GatedFusion, create_fusion


def _outputs(b: int = 5, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    present = {"ultrasound": torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool),
               "clinical": torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)}
    return {m: (torch.randn(b, 8, generator=g) * p.unsqueeze(1), p) for m, p in present.items()}


def _fusion() -> GatedFusion:
    torch.manual_seed(0)
    fusion = create_fusion("gated", {"ultrasound": 8, "clinical": 8}, hidden=4, null_slot=True).eval()
    with torch.no_grad():  # a slot that differs from zero features, so the tests can tell them apart
        fusion.null.copy_(torch.tensor([0.5, -1.0, 2.0, 0.3]))
        fusion.null_score.fill_(0.7)
    return fusion


def test_the_null_slot_keeps_absent_modalities_out():
    fusion, outputs = _fusion(), _outputs()
    changed = dict(outputs, ultrasound=(outputs["ultrasound"][0] + 100.0, outputs["ultrasound"][1]))
    absent = ~outputs["ultrasound"][1]
    assert torch.allclose(fusion(outputs)[absent], fusion(changed)[absent])
    assert not torch.allclose(fusion(outputs)[~absent], fusion(changed)[~absent])


def test_an_empty_input_gets_the_slot_output_and_gates_leave_room_for_it():
    fusion, outputs = _fusion(), _outputs()
    logits = fusion(outputs)
    gates = fusion.last_gates
    with torch.no_grad():
        slot_only = fusion.head(fusion.null.unsqueeze(0)).squeeze()
    assert torch.allclose(logits[3], slot_only)  # lesion 3 has no modality
    assert not torch.allclose(slot_only, fusion.head[-1].bias.squeeze())  # not the bias of a zero input
    assert gates.shape == (5, 2) and (gates[3] == 0).all()
    assert (gates.sum(1) < 1).all() and (gates.sum(1)[[0, 1, 2, 4]] > 0).all()


def test_without_the_slot_gated_fusion_has_no_extra_parameters():
    plain = create_fusion("gated", {"ultrasound": 8, "clinical": 8}, hidden=4)
    slotted = create_fusion("gated", {"ultrasound": 8, "clinical": 8}, hidden=4, null_slot=True)
    assert set(slotted.state_dict()) - set(plain.state_dict()) == {"null", "null_score"}
    assert plain.null is None and plain.null_score is None

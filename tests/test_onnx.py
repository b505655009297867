"""ONNX export of fold networks and ONNX Runtime inference: the torch path's probabilities to 1e-4."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="ONNX inference is an optional extra: pip install 'breastfusion[onnx]'")
pytest.importorskip("onnx", reason="ONNX export is an optional extra: pip install 'breastfusion[onnx]'")

from breastfusion import export_bundle, load_bundle  # noqa: E402
from breastfusion.bundle import BundleError  # noqa: E402
from breastfusion.cli.main import app  # noqa: E402
from breastfusion.config import load_config  # noqa: E402
from breastfusion.data.manifest import load_cohort  # noqa: E402
from breastfusion.data.synthetic.cohort import generate_cohort  # noqa: E402
from breastfusion.models.network import build_network  # noqa: E402
from breastfusion.onnx_export import OnnxFold, export_fold_onnx, input_names, onnx_session  # noqa: E402
from breastfusion.data.transforms import prepare_batch  # noqa: E402
from breastfusion.training.module import tta_logits  # noqa: E402

from .conftest import TINY_MODEL  # noqa: E402

FUSED = ["mammography", "ultrasound", "clinical"]


def _batch(b: int = 6, us_views: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {"mammography": torch.randint(0, 256, (b, 2, 1, 32, 32), dtype=torch.uint8, generator=g),
             "mammography_views": torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1], [0, 1], [1, 1]]).bool()[:b],
             "ultrasound": torch.randint(0, 256, (b, us_views, 1, 32, 32), dtype=torch.uint8, generator=g),
             "ultrasound_views": torch.ones(b, us_views).bool(),
             "clinical": torch.randn(b, 5, generator=g),
             "clinical_present": torch.tensor([1, 0, 1, 1, 0, 1]).bool()[:b]}
    if b > 2:
        batch["ultrasound_views"][2] = False  # lesion 2 has no image at all
    return batch


@pytest.mark.parametrize("tta", ["none", "hflip"])
@pytest.mark.parametrize("fusion, attention", [("concat", "cbam"), ("gated", "eca"), ("late", "none")])
def test_graph_gives_the_networks_probabilities(tmp_path, fusion, attention, tta):
    tiny = {m: {**TINY_MODEL[m], "attention": attention} for m in TINY_MODEL}
    torch.manual_seed(0)
    net = build_network(tuple(FUSED), load_config(None, model={**tiny, "fusion": fusion}).model, 5).eval()
    path = export_fold_onnx(net, tmp_path / "net.onnx", image_sizes={"mammography": 32, "ultrasound": 32},
                            n_clinical=5, tta=tta)
    graph = OnnxFold(onnx_session(path, threads=1))
    assert graph.inputs == input_names(tuple(FUSED))
    # 3 ultrasound frames (exported with 1), missing views, and a batch with no mammogram at all
    for batch in (_batch(), {**_batch(), "mammography_views": torch.zeros(6, 2, dtype=torch.bool)}, _batch(b=1)):
        with torch.no_grad():
            expected = torch.sigmoid(tta_logits(net, prepare_batch(batch), tta)).numpy()
        np.testing.assert_allclose(graph.run(batch)["prob"], expected, atol=1e-5)
    if tta == "hflip":  # the flip is in the graph: without it the numbers differ
        plain = OnnxFold(onnx_session(export_fold_onnx(net, tmp_path / "plain.onnx", n_clinical=5, image_sizes={
            "mammography": 32, "ultrasound": 32}), threads=1))
        assert np.abs(plain.run(_batch())["prob"] - graph.run(_batch())["prob"]).max() > 1e-4


def test_a_seed_ensemble_exports_as_one_graph_of_its_mean_logit(tmp_path):
    torch.manual_seed(0)
    ensemble = build_network(tuple(FUSED), load_config(None, model=TINY_MODEL).model, 5, seeds=3).eval()
    path = export_fold_onnx(ensemble, tmp_path / "ensemble.onnx", image_sizes={"mammography": 32, "ultrasound": 32},
                            n_clinical=5, tta="hflip")
    graph = OnnxFold(onnx_session(path, threads=1))
    assert graph.inputs == input_names(tuple(FUSED))
    with torch.no_grad():
        prepared = prepare_batch(_batch())
        members = torch.stack([tta_logits(m, prepared, "hflip") for m in ensemble.members])
    np.testing.assert_allclose(graph.run(_batch())["prob"], torch.sigmoid(members.mean(0)).numpy(), atol=1e-5)
    assert np.abs(torch.sigmoid(members[0]).numpy() - graph.run(_batch())["prob"]).max() > 1e-4


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx-cohort")
    generate_cohort(root, n_subjects=48, seed=0, image_px=48, missing_rate=0.3)
    return root


@pytest.fixture(scope="module")
def run_dir(cohort_dir, tmp_path_factory) -> Path:
    """A 2-fold run with hflip test-time augmentation: a fused network and a stage-2 learner on its features."""
    from breastfusion.experiment.run import run_experiment

    out = tmp_path_factory.mktemp("onnx-run")
    config = load_config(None, name="tiny", manifest=cohort_dir,
                         variants={"fused": FUSED, "fused_logistic": {"modalities": FUSED, "stage2": "logistic"}},
                         model=TINY_MODEL, training={"epochs": 1, "batch_size": 16, "tta": "hflip"},
                         cv={"n_splits": 2, "bootstrap": 100}, stage2={"inner_folds": 2},
                         ablation={"reference": "fused"})
    run_experiment(load_cohort(cohort_dir), config, out)
    return out


@pytest.fixture(scope="module")
def onnx_bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx-bundles") / "fused"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out), "--onnx"])
    assert result.exit_code == 0, result.output
    return out


def test_export_onnx_lists_each_fold_graph_with_its_sha256(onnx_bundle):
    meta = json.loads((onnx_bundle / "bundle.json").read_text())
    for k in range(2):
        data = (onnx_bundle / f"fold{k}.onnx").read_bytes()
        assert meta["files"][f"fold{k}.onnx"] == hashlib.sha256(data).hexdigest()
    assert load_bundle(onnx_bundle).onnx_graphs is not None


@pytest.mark.parametrize("variant", ["fused", "fused_logistic"])
def test_onnx_runtime_gives_the_torch_probabilities(run_dir, cohort_dir, tmp_path, variant):
    bundle = load_bundle(export_bundle(run_dir, tmp_path / variant, variant=variant, onnx=True))
    torch_lesions = bundle.predict_lesions(cohort_dir)
    onnx_lesions = bundle.predict_lesions(cohort_dir, runtime="onnx")
    assert torch_lesions["modalities_used"].nunique() > 1  # some lesions lack a modality
    np.testing.assert_allclose(onnx_lesions["prob"], torch_lesions["prob"], atol=1e-4)
    pd.testing.assert_frame_equal(onnx_lesions.drop(columns="prob"), torch_lesions.drop(columns="prob"))
    subjects = bundle.predict(cohort_dir, runtime="onnx")
    np.testing.assert_allclose(subjects["prob"], bundle.predict(cohort_dir)["prob"], atol=1e-4)


def test_cli_predict_with_onnx_runtime(onnx_bundle, cohort_dir, tmp_path):
    runner = CliRunner()
    for runtime in ("torch", "onnx"):
        result = runner.invoke(app, ["predict", str(onnx_bundle), str(cohort_dir), "--out",
                                     str(tmp_path / f"{runtime}.csv"), "--runtime", runtime])
        assert result.exit_code == 0, result.output
    torch_csv, onnx_csv = (pd.read_csv(tmp_path / f"{r}.csv") for r in ("torch", "onnx"))
    np.testing.assert_allclose(onnx_csv["prob"], torch_csv["prob"], atol=1e-4)
    assert (onnx_csv["subject_id"] == torch_csv["subject_id"]).all()


def test_onnx_runtime_errors_say_what_to_do(run_dir, cohort_dir, onnx_bundle, tmp_path):
    plain = load_bundle(export_bundle(run_dir, tmp_path / "plain"))
    with pytest.raises(BundleError, match="--onnx"):
        plain.predict(cohort_dir, runtime="onnx")
    with pytest.raises(ValueError, match=r"runtime should be one of \['torch', 'onnx'\], got 'tensorrt'"):
        plain.predict(cohort_dir, runtime="tensorrt")
    import shutil

    damaged = Path(shutil.copytree(onnx_bundle, tmp_path / "damaged"))
    graph = damaged / "fold1.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(BundleError, match="fold1.onnx: sha256"):
        load_bundle(damaged)

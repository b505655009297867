"""Read bundles exported before a module of ours was renamed.

A skops file names the module of every class it holds (``"__module__"`` in its
``schema.json``), and ``skops.io.load`` imports that module. A bundle exported
before a rename names the old module, which no longer exists. Rather than keep
the old module alive as an alias, :func:`with_current_modules` rewrites the old
names to the current ones in the file's bytes before they are checked against
the allowlist and loaded; the classes, their fields and the file's sha256
(verified on the bytes as exported) are untouched.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

__all__ = ["RENAMED_MODULES", "with_current_modules"]

#: old module path -> the module that holds its classes now.
RENAMED_MODULES: dict[str, str] = {
    "breastfusion.data.clinical": "breastfusion.data.clinical_features",
}

_SCHEMA = "schema.json"


def _rename(node: Any) -> bool:
    """Rewrite every renamed ``__module__`` in a skops schema tree in place; whether any was found."""
    changed = False
    if isinstance(node, dict):
        module = node.get("__module__")
        if isinstance(module, str) and module in RENAMED_MODULES:
            node["__module__"] = RENAMED_MODULES[module]
            changed = True
        for value in node.values():
            changed |= _rename(value)
    elif isinstance(node, list):
        for value in node:
            changed |= _rename(value)
    return changed


def with_current_modules(data: bytes) -> bytes:
    """A skops file's bytes with the renamed modules of :data:`RENAMED_MODULES` replaced by the current ones.

    Returns ``data`` itself when it names no renamed module, or when it is not a
    readable skops archive (the loader then reports the damage, naming the file).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read(_SCHEMA))
            if not _rename(schema):
                return data
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as rewritten:
                for info in archive.infolist():
                    content = json.dumps(schema).encode() if info.filename == _SCHEMA else archive.read(info)
                    rewritten.writestr(info, content, compress_type=info.compress_type)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return data
    return out.getvalue()

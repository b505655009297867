"""mini-MIAS (Suckling et al. 1994): 322 MLO mammograms, 1024x1024 PGM, with ``Info.txt``.

Layout read: ``ROOT/mdbNNN.pgm`` and ``ROOT/Info.txt``, whose data lines are
``REFNUM BG CLASS [SEVERITY X Y RADIUS]`` (e.g. ``mdb001 G CIRC B 535 425 197``;
``mdb003 D NORM``); other lines (headers) are skipped. An image with several
abnormalities has several lines.

Labels: severity ``M`` → malignant (if any line of the image says M), ``B`` →
benign; ``NORM`` images are left out by default (``normal="benign"`` keeps them).
Subjects: MIAS files the left and right MLO of one woman as consecutive
numbers (mdb001/mdb002 ...), so subject = ``mias-<(N+1)//2>``; each image is
its own lesion. ``roi_box`` (top,left,bottom,right) comes from the centre and
radius (MIAS measures y from the bottom edge).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from breastfusion.data.adapters.base import DatasetLayoutError, PreparedDataset, register, take_options

__all__ = ["prepare_mias"]

_LINE = re.compile(r"^(mdb\d{3})\s+([FGD])\s+(CALC|CIRC|SPIC|MISC|ARCH|ASYM|NORM)(?:\s+([BM])(?:\s+(\d+)\s+(\d+)\s+(\d+))?)?\s*$")
SIDE = 1024


@register("mias")
def prepare_mias(root: Path, **options) -> PreparedDataset:
    """Map mini-MIAS to the manifest contract.

    Args:
        root: the folder with ``Info.txt`` and the ``mdbNNN.pgm`` files.
        normal: ``exclude`` (default) or ``benign``.

    Raises:
        DatasetLayoutError: no ``Info.txt``, no parsable line in it, or an image it lists is absent.
    """
    opts = take_options("mias", options, {"normal": ("exclude", "benign")})
    root = Path(root)
    info = next((p for p in (root / "Info.txt", root / "info.txt") if p.is_file()), None)
    if info is None:
        raise DatasetLayoutError(f"{root} is not mini-MIAS: expected Info.txt beside mdb001.pgm ... mdb322.pgm")
    lines = []
    for number, text in enumerate(info.read_text(errors="replace").splitlines(), start=1):
        if m := _LINE.match(text.strip()):
            lines.append({"ref": m.group(1), "class": m.group(3), "severity": m.group(4),
                          "x": m.group(5), "y": m.group(6), "radius": m.group(7), "line": number})
    if not lines:
        raise DatasetLayoutError(f"{info}: no line like 'mdb001 G CIRC B 535 425 197'; is this mini-MIAS's Info.txt?")
    table = pd.DataFrame(lines)
    rows, excluded = [], []
    for ref, group in table.groupby("ref", sort=True):
        path = f"{ref}.pgm"
        if not (root / path).is_file():
            raise DatasetLayoutError(f"{info}, line {group['line'].iloc[0]}: {ref} listed but {root / path} is missing")
        severities = set(group["severity"].dropna())
        if not severities:
            if opts["normal"] == "exclude":
                excluded.append({"path": path, "reason": "NORM: no abnormality (normal='exclude')"})
                continue
            label = "benign"
        else:
            label = "malignant" if "M" in severities else "benign"
        number = int(ref[3:])
        box = ""
        located = group.dropna(subset=["x"])
        if len(located):
            x, y, r = (located[c].astype(int) for c in ("x", "y", "radius"))
            top, bottom = (SIDE - y - r).clip(0).min(), (SIDE - y + r).clip(upper=SIDE).max()
            left, right = (x - r).clip(0).min(), (x + r).clip(upper=SIDE).max()
            box = f"{top},{left},{bottom},{right}"
        rows.append({"subject_id": f"mias-{(number + 1) // 2:03d}", "lesion_id": f"mias-{ref}",
                     "modality": "mammography", "view": "MLO", "path": path, "label": label,
                     "source_label": "+".join(sorted(f"{c}:{s}" if isinstance(s, str) else c
                                                     for c, s in zip(group["class"], group["severity"]))),
                     "roi_box": box})
    notes = ["labels: severity M -> malignant (any line), B -> benign; NORM -> "
             + ("left out" if opts["normal"] == "exclude" else "benign"),
             "subjects: consecutive image pairs (mdb001/mdb002, ...) are one woman's left and right MLO",
             "roi_box: top,left,bottom,right in pixels from the abnormality's centre and radius"]
    return PreparedDataset("mias", root, pd.DataFrame(rows),
                           excluded=pd.DataFrame(excluded, columns=["path", "reason"]), notes=notes)

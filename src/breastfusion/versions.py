"""Installed versions of the libraries a result depends on, recorded with runs and bundles."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

__all__ = ["RUN_LIBRARIES", "library_versions"]

#: What a run's numbers depend on: training and evaluation, and the image path (Pillow and pydicom decode, scipy
#: crops and masks, segmentation_models_pytorch builds the localiser). A rerun in a rebuilt environment can move a
#: BUSI figure by 0.02-0.035 (README, "Reruns"), so every library that touches the pixels is recorded.
RUN_LIBRARIES = ("breastfusion", "torch", "timm", "lightning", "scikit-learn", "numpy", "pandas", "pillow", "scipy",
                 "pydicom", "segmentation_models_pytorch")


def library_versions(names: Iterable[str] = RUN_LIBRARIES) -> dict[str, str]:
    """Python's version and each named distribution's (``"not installed"`` when absent)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out

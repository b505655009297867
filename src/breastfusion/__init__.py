"""breastfusion: multimodal breast-lesion classification (mammography + ultrasound + clinical data)."""

import os as _os

# OpenMP threads that spin while waiting turn a busy 2-core machine into a crawl (10x and worse
# measured here when two torch processes share the cores); sleeping waits cost nothing when idle.
# Must be set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["__version__"]

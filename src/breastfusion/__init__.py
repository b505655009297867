"""breastfusion: multimodal breast-lesion classification (mammography + ultrasound + clinical data)."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "export_bundle", "load_bundle"]


def __getattr__(name: str) -> Any:
    # The bundle functions pull in torch and scikit-learn: import them on first use, so `import breastfusion`
    # (and `breastfusion --help`) stays instant.
    if name in ("export_bundle", "load_bundle"):
        from breastfusion import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module 'breastfusion' has no attribute {name!r}")

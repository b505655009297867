"""breastfusion: multimodal breast-lesion classification (mammography + ultrasound + clinical data)."""

__version__ = "0.1.0"
__all__ = ["__version__"]

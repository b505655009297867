"""A local web page that applies a fitted model bundle to one case: ``breastfusion serve BUNDLE``."""

from breastfusion.app.server import create_app, serve

__all__ = ["create_app", "serve"]

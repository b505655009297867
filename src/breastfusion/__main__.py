"""``python -m breastfusion``: the same command line as the ``breastfusion`` console script."""

from breastfusion.cli.main import app

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="breastfusion")

"""breastfusion: multimodal breast-lesion classification (mammography + ultrasound + clinical data).

The public Python API, for notebooks and scripts (each name is imported on first use, so
``import breastfusion`` stays instant and free of torch)::

    import breastfusion as bf
    cohort = bf.load_cohort("my_cohort/")          # or bf.generate_cohort(...)
    bundle = bf.load_bundle("model.bfbundle")

    exp = bf.Experiment("configs/demo.yaml")       # or a config dict; see breastfusion.api
    variants = exp.fit(cohort)                     # per-variant results (results.json "variants")
    bundle = exp.export("my-model")

    bf.ensemble_runs(["runs/lite0", "runs/localised"], "runs/both")   # mean logit of runs on the same folds
    bundle = bf.export_bundle("runs/both", "both-model")               # applied like any bundle

    recipe = bf.load_ensemble_recipe("configs/bus_clinical_pair.yaml")  # member configs, fitted then ensembled
    bf.run_ensemble_recipe(cohort, recipe, "runs/pair")                  # runs/pair/members/NAME + the ensemble
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (imported lazily by ``__getattr__``).
_LAZY = {
    "Bundle": "breastfusion.bundle",
    "Experiment": "breastfusion.api",
    "export_bundle": "breastfusion.bundle",
    "load_bundle": "breastfusion.bundle",
    "load_cohort": "breastfusion.data.manifest",
    "generate_cohort": "breastfusion.data.synthetic.cohort",
    "create_encoder": "breastfusion.models.encoders",
    "load_config": "breastfusion.config",
    "ensemble_runs": "breastfusion.experiment.run_ensemble",
    "load_ensemble_recipe": "breastfusion.experiment.ensemble_recipe",
    "run_ensemble_recipe": "breastfusion.experiment.ensemble_recipe",
}
__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    # The bundle, encoder and cohort code pull in torch and scikit-learn: import them on first use, so
    # `import breastfusion` (and `breastfusion --help`) stays instant.
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'breastfusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

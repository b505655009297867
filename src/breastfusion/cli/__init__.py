"""The ``breastfusion`` command line, one module per group of verbs.

* :mod:`.main`: the ``breastfusion`` app (``demo``, ``run``, ``synthetic``, ``explain``, ``compare``,
  ``export``, ``predict``, ``serve``) and the registration of the groups below;
* :mod:`.ablation`: ``breastfusion ablate``;
* :mod:`.data`: ``breastfusion data prepare|check|preprocess`` and ``breastfusion cache info|clear``;
* :mod:`.models`: ``breastfusion models list``;
* :mod:`.common`: the console, error exit and progress bar they share.

The console script and ``python -m breastfusion`` run :data:`breastfusion.cli.main.app`.
"""

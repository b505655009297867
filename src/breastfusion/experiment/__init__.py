"""The experiment driver: cross-validated runs, ablations and the demo.

Sits after ``training`` in the data flow: it splits a cohort into folds,
trains every variant per fold, and writes a run folder that ``evaluation``
turns into numbers and ``bundle`` exports for prediction.
"""

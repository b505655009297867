"""Explanations a radiologist can check: CAM heatmaps, modality contributions, clinical importance, faithfulness.

* :mod:`.cams`: Score-CAM / Grad-CAM / Grad-CAM++ (pytorch-grad-cam) on one image of a multimodal network;
* :mod:`.shapley`: exact Shapley values over modalities through the missing-modality mechanism;
* :mod:`.importance`: clinical permutation importance grouped by subject;
* :mod:`.faithfulness`: energy in mask, pointing game, deletion / insertion, random baselines;
* :mod:`.gallery`: overlays and the correct / misclassified gallery;
* :mod:`.runner`: :func:`explain_run`, the ``breastfusion explain`` verb.
"""

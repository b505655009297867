"""Shared fixtures: small synthetic cohorts and a tiny, fast model configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Model settings small enough for tests: timm's tiny test ResNet at 32 px, 2 epochs.
TINY_MODEL = {
    "mammography": {"encoder": "test_resnet", "encoder_kwargs": {}, "image_size": 32},
    "ultrasound": {"encoder": "test_resnet", "encoder_kwargs": {}, "image_size": 32},
}
TINY_TRAINING = {"epochs": 2, "batch_size": 16}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread inside the block, the caller's count restored after: the same floating-point sums
    on any machine's core count, and no two OpenMP threads spin-waiting on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _private_array_cache(tmp_path_factory):
    """Keep the preprocessed-array cache of the tests out of the user's home."""
    os.environ["BREASTFUSION_CACHE"] = str(tmp_path_factory.mktemp("array-cache"))


@pytest.fixture(scope="session")
def small_cohort_dir(tmp_path_factory) -> Path:
    """A 60-subject synthetic cohort at 64 px, written once per session."""
    from breastfusion.data.synthetic.cohort import generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n_subjects=60, seed=3, image_px=64)
    return root


def assert_bundle_refuses_a_changed_then_a_missing(bundle: Path, name: str, changed: str) -> None:
    """``load_bundle`` refuses ``bundle`` with its file ``name`` changed by one byte (the error matching
    ``changed``), then with that file deleted (naming it as missing)."""
    import re

    from breastfusion import load_bundle
    from breastfusion.bundle import BundleError

    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=changed):
        load_bundle(bundle)
    path.unlink()
    with pytest.raises(BundleError, match=rf"{re.escape(name)} is missing"):
        load_bundle(bundle)


def marker_cohort(root: Path, n_subjects: int, *, seed: int, rng_seed: int, pair_groups: bool = False) -> Path:
    """A synthetic cohort at ``root`` whose ultrasound images are shuffled across lesions (uninformative) and whose
    clinical table holds one marker close to the label (informative): candidates of known order for selection tests.
    With ``pair_groups``, subjects come in pairs sharing a ``cv_group``."""
    import numpy as np
    import pandas as pd

    from breastfusion.data.synthetic.cohort import generate_cohort

    generate_cohort(root, n_subjects=n_subjects, seed=seed, image_px=32, masks=False)
    manifest = pd.read_csv(root / "manifest.csv", dtype=str)
    rng = np.random.default_rng(rng_seed)
    us = manifest["modality"] == "ultrasound"
    manifest.loc[us, "path"] = rng.permutation(manifest.loc[us, "path"].to_numpy())
    if pair_groups:
        manifest["cv_group"] = "G" + (manifest["subject_id"].str[1:].astype(int) // 2).astype(str)
    manifest.to_csv(root / "manifest.csv", index=False)
    subjects = manifest.drop_duplicates("subject_id")
    y = (subjects["label"] == "malignant").to_numpy(dtype=float)
    pd.DataFrame({"subject_id": subjects["subject_id"].to_numpy(),
                  "marker": np.round(2 * y + rng.normal(0, 0.6, len(y)), 3)}).to_csv(root / "clinical.csv",
                                                                                    index=False)
    return root

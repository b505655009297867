"""What a researcher writes in fifty lines, without breastfusion: the baselines bench/real_data.py must beat.

* :func:`plain_cnn_probs`: a timm CNN (``resnet18`` from scratch, or ``efficientnet_lite0`` from a local
  ImageNet state dict) on images squashed to ``size`` x ``size``, random left-right flips, Adam at 1e-3,
  a fixed number of epochs, no early stopping, no test-time augmentation;
* :func:`plain_clinical_probs`: scikit-learn's logistic regression on a median-imputed, one-hot,
  standardised clinical table;
* :func:`plain_average`: the mean of the two probabilities.

They take the same (train, test) positions as the toolkit's folds, so both are scored on identical
subjects. Nothing here is tuned on a test fold; the settings are the plain defaults a first script uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["load_images", "load_roi_images", "plain_cnn_probs", "plain_cnn_probs_on", "plain_clinical_probs", "plain_average"]


def load_images(paths: list[str], size: int) -> torch.Tensor:
    """Greyscale images resized (not padded) to ``size`` x ``size``, as floats (N, 1, size, size) in [0, 1]."""
    arrays = [np.asarray(Image.open(p).convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
              for p in paths]
    return torch.from_numpy(np.stack(arrays))[:, None]


def load_roi_images(paths: list[str], masks: list[list[str]], size: int, *, margin: float) -> torch.Tensor:
    """Like :func:`load_images`, but each image first cropped to its lesion: the bounding box of the union of its
    mask files, widened by ``margin`` x the box's height and width on every side (clipped to the image)."""
    arrays = []
    for path, mask_files in zip(paths, masks, strict=True):
        image = Image.open(path).convert("L")
        union = np.zeros((image.height, image.width), bool)
        for m in mask_files:
            union |= np.asarray(Image.open(m).convert("L")) > 0
        rows, cols = np.nonzero(union)
        if rows.size == 0:
            raise ValueError(f"{path}: its masks {mask_files} mark no lesion pixel")
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        dy, dx = int((bottom - top) * margin), int((right - left) * margin)
        box = (max(0, left - dx), max(0, top - dy), min(image.width, right + dx), min(image.height, bottom + dy))
        arrays.append(np.asarray(image.crop(box).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(arrays))[:, None]


def _train_predict(x_train: torch.Tensor, y_train: np.ndarray, x_tests: list[torch.Tensor], *, arch: str,
                   epochs: int, seed: int, state_dict: dict | None) -> list[np.ndarray]:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=1, in_chans=1)
    if state_dict is not None:
        missing = model.load_state_dict(state_dict, strict=False)
        assert not [k for k in missing.missing_keys if not k.startswith("classifier")], missing
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.tensor(y_train, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_train), generator=generator).split(32):
            if len(batch) < 2:
                continue
            xb = x_train[batch]
            flip = torch.rand(len(batch), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.binary_cross_entropy_with_logits(model((xb - 0.5) / 0.25)[:, 0], y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        return [torch.cat([torch.sigmoid(model((xb - 0.5) / 0.25)[:, 0]) for xb in x_test.split(64)]).numpy()
                for x_test in x_tests]


def plain_cnn_probs(images: torch.Tensor, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], *,
                    arch: str = "resnet18", epochs: int = 20, seed: int = 0,
                    state_dict: dict | None = None) -> np.ndarray:
    """Out-of-fold P(malignant) of a plain CNN, one network per fold.

    Args:
        images: (N, 1, S, S) in [0, 1], one per row of ``y``.
        y: labels (N,).
        folds: (train, test) positions.
        arch: timm architecture.
        epochs: fixed training length.
        seed: seeds initialisation and shuffling (fold k uses seed + k).
        state_dict: pretrained weights (a 1-channel stem; the classifier is left new).
    """
    return plain_cnn_probs_on(images, y, folds, {"images": images}, arch=arch, epochs=epochs, seed=seed,
                              state_dict=state_dict)["images"]


def plain_cnn_probs_on(images: torch.Tensor, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                       test_sets: dict[str, torch.Tensor], *, arch: str = "resnet18", epochs: int = 20, seed: int = 0,
                       state_dict: dict | None = None) -> dict[str, np.ndarray]:
    """Like :func:`plain_cnn_probs`, but each fold's network (trained on ``images``) predicts its held-out rows
    from every one of ``test_sets`` (other versions of the same N images, e.g. other crops): ``{name: probs}``."""
    out = {name: np.full(len(y), np.nan) for name in test_sets}
    for k, (train, test) in enumerate(folds):
        probs = _train_predict(images[train], y[train], [x[test] for x in test_sets.values()], arch=arch,
                               epochs=epochs, seed=seed + k, state_dict=state_dict)
        for name, p in zip(test_sets, probs):
            out[name][test] = p
    return out


def plain_clinical_probs(table: pd.DataFrame, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
                         ) -> np.ndarray:
    """Out-of-fold P(malignant) of a logistic regression on the clinical table (one row per sample)."""
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in table if pd.api.types.is_numeric_dtype(table[c])]
    other = [c for c in table if c not in numeric]
    prep = make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), other))
    out = np.full(len(y), np.nan)
    frame = table.copy()
    frame[other] = frame[other].astype(object).where(frame[other].notna(), np.nan)
    for train, test in folds:
        model = make_pipeline(prep, LogisticRegression(max_iter=2000)).fit(frame.iloc[train], y[train])
        out[test] = model.predict_proba(frame.iloc[test])[:, 1]
    return out


def plain_average(*probs: np.ndarray) -> np.ndarray:
    """The mean of several models' probabilities."""
    return np.mean(np.stack(probs), axis=0)

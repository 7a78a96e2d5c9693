"""Breast Cancer Wisconsin (Diagnostic) for paper Fig. 3b (docs/design.md, "Presets").

Source: scikit-learn's ``load_breast_cancer()``, which ships the 569 x 30 table with the
package (no download). Labels as scikit-learn gives them (0 = malignant, 1 = benign).
The paper gives no split, so ours: a stratified 80/20 train/test split drawn with
``numpy.random.default_rng(SPLIT_SEED)`` (456 train, 113 test), then each feature standardized
with the mean and standard deviation of the *training* rows only (no test leakage).
"""

from __future__ import annotations

import numpy as np
import torch

from tesseract_fl.data.registry import Dataset
from tesseract_fl.errors import DatasetError

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "load_breast_cancer", "stratified_split"]

#: Fraction of each class held out for testing.
TEST_FRACTION = 0.2
#: Seed of the train/test split (fixed, so every run sees the same split).
SPLIT_SEED = 0


def standardized_split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, axis: tuple[int, ...]
) -> dict[str, torch.Tensor]:
    """Stratified split, then features standardized with the training rows' mean and std over
    ``axis`` (a constant feature keeps std 1): ``train_x``/``train_y``/``test_x``/``test_y``.

    Raises:
        DatasetError: no samples, or non-finite features (they would turn every standardized
            value NaN).
    """
    if not np.isfinite(x).all():
        raise DatasetError(
            f"features of shape {list(x.shape)} hold NaN or infinite values; the data are corrupt."
        )
    train, test = stratified_split(y, test_fraction, seed)
    mean = x[train].mean(axis=axis, keepdims=True)
    std = x[train].std(axis=axis, keepdims=True)
    std[std == 0] = 1.0
    xs = ((x - mean) / std).astype(np.float32)
    return {
        "train_x": torch.from_numpy(xs[train]),
        "train_y": torch.from_numpy(y[train]),
        "test_x": torch.from_numpy(xs[test]),
        "test_y": torch.from_numpy(y[test]),
    }


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) index arrays holding ``round(test_fraction * n_c)`` of each class c
    in the test part.

    Raises:
        DatasetError: ``labels`` is empty (there is nothing to split).
    """
    if len(labels) == 0:
        raise DatasetError("cannot split an empty data set (0 samples) into train and test parts.")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(test_fraction * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_breast_cancer(test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> Dataset:
    """The standardized, stratified-split data set: float32 ``[n, 30]`` features, int64 labels.

    Raises:
        DatasetError: scikit-learn is not installed (it is a declared dependency).
    """
    try:
        from sklearn.datasets import load_breast_cancer as sk_load
    except ImportError as exc:  # pragma: no cover - scikit-learn is a declared dependency
        raise DatasetError(
            "dataset 'breast_cancer' is read from scikit-learn, which is not installed: "
            "`pip install 'scikit-learn>=1.4,<2'`."
        ) from exc
    bunch = sk_load()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    return Dataset(
        name="breast_cancer",
        **standardized_split(x, y, test_fraction, seed, axis=(0,)),
        num_classes=2,
        source=f"scikit-learn {_sklearn_version()} load_breast_cancer()",
    )


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)

"""CIFAR-10 from its python pickle batches (DESIGN.md section 5; paper Table 1).

No package ships CIFAR-10, and nothing is downloaded here (``tesseract-fl datasets prepare
cifar10`` downloads it where there is internet, see ``prepare.py``): unpack the canonical
``cifar-10-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html) so that
``<data_dir>/cifar10/cifar-10-batches-py/`` (or ``<data_dir>/cifar10/`` itself) holds
``data_batch_1`` ... ``data_batch_5`` and ``test_batch``. Each batch is a pickled dict with
``b"data"`` (uint8 ``[N, 3072]``, rows of 1024 red, 1024 green, 1024 blue pixels) and
``b"labels"`` (N ints in 0..9).

The pickles are read with a restricted unpickler that only builds dicts, lists, strings,
numbers and numpy arrays, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tesseract_fl.data.registry import DATA_DIR_ENV, Dataset, default_data_dir
from tesseract_fl.errors import DatasetError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "TEST_BATCH",
    "TRAIN_BATCHES",
    "cifar10_dir",
    "load_cifar10",
    "read_cifar_batch",
]

TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
#: Per-channel mean and standard deviation of the training pixels scaled to [0, 1].
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: (uint8 images ``[N, 3, 32, 32]``, int64 labels ``[N]``).

    Raises:
        DatasetError: the file is missing, truncated, not a CIFAR batch, or inconsistent;
            the message names the file.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read CIFAR-10 batch ({exc}).") from exc
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # truncated/corrupt pickles raise many exception types
        raise DatasetError(
            f"{p}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
            "the file is truncated or corrupt. Unpack cifar-10-python.tar.gz again."
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{p}: expected a pickled dict, found {type(obj).__name__}.")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{p}: the batch dict has no b'data' and b'labels' entries.")
    arr = np.asarray(data)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{p}: expected uint8 data of shape [N, 3072], found {arr.dtype} {list(arr.shape)}."
        )
    try:
        lab = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{p}: labels are not integers ({exc}).") from exc
    if lab.shape != (arr.shape[0],):
        raise DatasetError(
            f"{p}: {lab.size} labels for {arr.shape[0]} images; the batch is inconsistent."
        )
    if lab.size and (int(lab.min()) < 0 or int(lab.max()) > 9):
        raise DatasetError(f"{p}: labels must lie in [0, 10).")
    return arr.reshape(-1, 3, 32, 32), lab


def cifar10_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the batches: ``<data_dir>/cifar10/cifar-10-batches-py`` if it
    exists, else ``<data_dir>/cifar10``."""
    base = default_data_dir(data_dir) / "cifar10"
    nested = base / "cifar-10-batches-py"
    return nested if nested.is_dir() else base


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, 3, 32, 32]`` -> float32 normalized per channel."""
    x = torch.from_numpy(images).to(torch.float32).div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def load_cifar10(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """CIFAR-10 (50k train / 10k test, float32 ``[N, 3, 32, 32]``, 10 classes).

    Raises:
        DatasetError: batches missing (the message says what to place where) or unreadable.
    """
    directory = cifar10_dir(data_dir)
    names = (*TRAIN_BATCHES, TEST_BATCH)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DatasetError(
            f"dataset 'cifar10': missing in {directory}: {', '.join(missing)}. Run "
            "`tesseract-fl datasets prepare cifar10` (downloads it where there is internet; "
            "nothing is downloaded at run time), or get cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into "
            f"{default_data_dir(data_dir) / 'cifar10'} (giving cifar-10-batches-py/ with "
            f"data_batch_1..5 and test_batch), or point --data-dir / ${DATA_DIR_ENV} at a "
            "directory holding such a cifar10/ folder."
        )
    train = [read_cifar_batch(directory / n) for n in TRAIN_BATCHES]
    test_x, test_y = read_cifar_batch(directory / TEST_BATCH)
    return Dataset(
        name="cifar10",
        train_x=_to_tensor(np.concatenate([x for x, _ in train])),
        train_y=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_x=_to_tensor(test_x),
        test_y=torch.from_numpy(test_y),
        num_classes=10,
        source=str(directory),
    )

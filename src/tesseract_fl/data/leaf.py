"""LEAF FEMNIST from its JSON files (docs/design.md, "Where real data comes from"; paper Table 1:
writers folded into 35 clients).

No package ships FEMNIST, and nothing is downloaded here: run LEAF's preprocessing
(https://github.com/TalwalkarLab/leaf, ``data/femnist``) and copy its ``data/train/`` and
``data/test/`` folders to ``<data_dir>/femnist/train/`` and ``<data_dir>/femnist/test/``.
Each ``*.json`` file there is
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784 floats]], "y": [ints]}}}``
with 28x28 images flattened row-major (values in [0, 1]) and labels in 0..61.

The writer of every training sample is kept (``Dataset.train_groups``) so that the
``writers`` partition assigns whole writers to clients, as the paper folds writers into 35
clients.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tesseract_fl.data.registry import DATA_DIR_ENV, Dataset, default_data_dir
from tesseract_fl.errors import DatasetError

__all__ = ["FEMNIST_CLASSES", "LeafSplit", "load_femnist", "read_leaf_dir", "read_leaf_json"]

FEMNIST_CLASSES = 62
_PIXELS = 28 * 28

#: (images float32 ``[N, 784]``, labels int64 ``[N]``, writer names, writer index per sample).
LeafSplit = tuple[np.ndarray, np.ndarray, list[str], np.ndarray]


def _pixels(p: Path, user: str, value: object) -> np.ndarray:
    """A writer's ``x`` as float32, or DatasetError unless it is a list of numbers (strings,
    booleans and nulls are refused rather than converted)."""
    if not isinstance(value, list):
        raise DatasetError(f"{p}: user {user!r}: 'x' must be a list of pixel rows.")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged rows
        raise DatasetError(f"{p}: user {user!r}: malformed x ({exc}).") from exc
    if arr.size and arr.dtype.kind not in "fiu":
        raise DatasetError(f"{p}: user {user!r}: 'x' must hold numbers, found {arr.dtype} values.")
    return arr.astype(np.float32)


def _labels(p: Path, user: str, value: object) -> np.ndarray:
    """A writer's ``y`` as int64, or DatasetError unless it is a list of integers in
    ``[0, 62)`` (checked before numpy converts anything, so floats, NaN, booleans, strings
    and huge integers are refused, not truncated or overflowed)."""
    if not isinstance(value, list):
        raise DatasetError(f"{p}: user {user!r}: 'y' must be a list of labels.")
    bad = next((v for v in value if type(v) is not int or not 0 <= v < FEMNIST_CLASSES), None)
    if bad is not None:
        if type(bad) is not int:
            found = f"a {type(bad).__name__}"
        else:
            found = str(bad) if abs(bad) < 10**9 else "an integer far out of range"
        raise DatasetError(
            f"{p}: user {user!r}: labels must be integers in [0, {FEMNIST_CLASSES}), found {found}."
        )
    return np.array(value, dtype=np.int64)


def read_leaf_json(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read one LEAF FEMNIST JSON file: writer -> (float32 ``[n, 784]``, int64 ``[n]``).

    Raises:
        DatasetError: unreadable, truncated or malformed file (the message names it).
    """
    p = Path(path)
    if p.exists() and not p.is_file():  # a device or pipe could never end
        raise DatasetError(f"{p}: not a regular file; expected a LEAF JSON file.")
    try:
        with p.open("rb") as fh:
            obj: Any = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or encoding
        raise DatasetError(
            f"{p}: not a readable LEAF JSON file ({exc}); it is truncated or corrupt."
        ) from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("user_data"), dict):
        raise DatasetError(f"{p}: expected a LEAF JSON object with a 'user_data' mapping.")
    users = obj.get("users", list(obj["user_data"]))
    if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
        raise DatasetError(f"{p}: 'users' must be a list of writer names (strings).")
    listed: set[str] = set()
    for u in users:
        if u in listed:
            raise DatasetError(f"{p}: writer {u[:40]!r} is listed twice in 'users'.")
        listed.add(u)
    counts = obj.get("num_samples")
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, user in enumerate(users):
        entry = obj["user_data"].get(user)
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DatasetError(f"{p}: user {user!r} has no 'x'/'y' data in 'user_data'.")
        x = _pixels(p, user, entry["x"])
        y = _labels(p, user, entry["y"])
        if x.ndim != 2 or x.shape[1] != _PIXELS or y.shape != (x.shape[0],):
            raise DatasetError(
                f"{p}: user {user!r}: expected x [n, 784] and y [n], found "
                f"{list(x.shape)} and {list(y.shape)}."
            )
        if isinstance(counts, list) and i < len(counts) and counts[i] != len(y):
            raise DatasetError(
                f"{p}: user {user!r}: num_samples says {counts[i]}, data holds {len(y)}."
            )
        if not np.isfinite(x).all():
            raise DatasetError(f"{p}: user {user!r}: non-finite pixel values.")
        out[str(user)] = (x, y)
    return out


def read_leaf_dir(directory: Path) -> LeafSplit:
    """Read every ``*.json`` in ``directory`` (sorted by name); writers in order of appearance.

    Raises:
        DatasetError: no JSON file, a bad file, or a writer appearing in two files.
    """
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DatasetError(f"{directory}: no LEAF *.json files.")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    writers: list[str] = []
    seen: set[str] = set()
    for f in files:
        for user, (x, y) in read_leaf_json(f).items():
            if user in seen:
                raise DatasetError(f"{f}: writer {user!r} also appears in another file.")
            seen.add(user)
            groups.append(np.full(len(y), len(writers), dtype=np.int64))
            writers.append(user)
            xs.append(x)
            ys.append(y)
    return (
        np.concatenate(xs) if xs else np.zeros((0, _PIXELS), np.float32),
        np.concatenate(ys) if ys else np.zeros(0, np.int64),
        writers,
        np.concatenate(groups) if groups else np.zeros(0, np.int64),
    )


def load_femnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """FEMNIST: float32 ``[N, 1, 28, 28]`` images (LEAF's [0, 1] values), 62 classes, and the
    writer index of every training sample in ``train_groups``.

    Raises:
        DatasetError: folders missing (the message says what to place where) or bad files.
    """
    base = default_data_dir(data_dir) / "femnist"
    missing = [
        s
        for s in ("train", "test")
        if not (base / s).is_dir() or not any((base / s).glob("*.json"))
    ]
    if missing:
        raise DatasetError(
            f"dataset 'femnist': no LEAF JSON files in "
            f"{', '.join(str(base / s) for s in missing)}. "
            "FEMNIST is not downloaded by this tool: run LEAF's data/femnist preprocessing "
            "(https://github.com/TalwalkarLab/leaf; `tesseract-fl datasets prepare femnist` "
            "prints the commands) and copy its data/train/*.json and "
            f"data/test/*.json into {base / 'train'} and {base / 'test'}, or point --data-dir / "
            f"${DATA_DIR_ENV} at a directory holding such a femnist/ folder."
        )
    tr_x, tr_y, _, tr_groups = read_leaf_dir(base / "train")
    te_x, te_y, _, _ = read_leaf_dir(base / "test")
    return Dataset(
        name="femnist",
        train_x=torch.from_numpy(tr_x).view(-1, 1, 28, 28),
        train_y=torch.from_numpy(tr_y),
        test_x=torch.from_numpy(te_x).view(-1, 1, 28, 28),
        test_y=torch.from_numpy(te_y),
        num_classes=FEMNIST_CLASSES,
        source=str(base),
        train_groups=torch.from_numpy(tr_groups),
    )

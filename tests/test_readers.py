"""CIFAR-10 pickle batches, LEAF FEMNIST JSON and Ch-MNIST (npz and .tif folders): readers on
small fixtures written in the real formats, clear errors for missing and corrupt files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from datafixtures import cifar_batches
from tesseract_fl.data import load_dataset, partition, verify_dataset
from tesseract_fl.data.chmnist import CLASS_FOLDERS
from tesseract_fl.data.cifar import read_cifar_batch
from tesseract_fl.data.leaf import read_leaf_json
from tesseract_fl.errors import ConfigError, DatasetError


# ---------------------------------------------------------------- CIFAR-10
def _write_cifar(root: Path, n: int = 4, nested: bool = True) -> Path:
    d = root / "cifar10" / ("cifar-10-batches-py" if nested else "")
    d.mkdir(parents=True, exist_ok=True)
    for name, data in cifar_batches(n).items():
        (d / name).write_bytes(data)
    return d


def test_cifar10_loads(tmp_path: Path) -> None:
    d = _write_cifar(tmp_path)
    x, y = read_cifar_batch(d / "data_batch_1")
    raw = pickle.loads((d / "data_batch_1").read_bytes())
    assert x.shape == (4, 3, 32, 32) and np.array_equal(x.reshape(4, -1), raw[b"data"])
    assert y.tolist() == raw[b"labels"]
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.num_classes == 10
    assert verify_dataset("cifar10", tmp_path) == {"cifar10": "ok"}
    flat = tmp_path / "flat"
    _write_cifar(flat, nested=False)
    assert load_dataset("cifar10", flat).train_x.shape[0] == 20


def test_cifar10_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data_batch_1.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path)
    assert verify_dataset("cifar10", tmp_path)["cifar10"] != "ok"
    d = _write_cifar(tmp_path)
    good = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"data_batch_3.*truncated or corrupt"):
        load_dataset("cifar10", tmp_path)
    # a pickle that would call os.system is refused, not executed
    (d / "data_batch_3").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(DatasetError, match=r"data_batch_3.*refusing to load global os.system"):
        read_cifar_batch(d / "data_batch_3")
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8)}))
    with pytest.raises(DatasetError, match="data_batch_3"):
        read_cifar_batch(d / "data_batch_3")


# ---------------------------------------------------------------- FEMNIST (LEAF JSON)
def _leaf_file(path: Path, writers: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    user_data = {
        w: {
            "x": rng.random((n, 784)).round(3).tolist(),
            "y": rng.integers(0, 62, n).tolist(),
        }
        for w, n in writers.items()
    }
    obj = {"users": list(writers), "num_samples": list(writers.values()), "user_data": user_data}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _write_femnist(root: Path) -> Path:
    base = root / "femnist"
    _leaf_file(base / "train" / "all_data_0_train.json", {"f0000_14": 3, "f0001_41": 2}, 0)
    _leaf_file(base / "train" / "all_data_1_train.json", {"f0002_07": 4, "f0003_33": 1}, 1)
    _leaf_file(base / "test" / "all_data_0_test.json", {"f0000_14": 1, "f0002_07": 2}, 2)
    return base


def test_femnist_loads_with_writers(tmp_path: Path) -> None:
    base = _write_femnist(tmp_path)
    ds = load_dataset("femnist", tmp_path)
    assert ds.train_x.shape == (10, 1, 28, 28) and ds.test_x.shape == (3, 1, 28, 28)
    assert ds.num_classes == 62 and ds.train_y.dtype == torch.int64
    assert ds.train_groups is not None
    assert ds.train_groups.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    users = read_leaf_json(base / "train" / "all_data_0_train.json")
    assert list(users) == ["f0000_14", "f0001_41"] and users["f0000_14"][0].shape == (3, 784)
    # writers are dealt whole to clients
    parts = partition(
        ds.train_y.numpy(),
        2,
        "writers",
        groups=ds.train_groups.numpy(),
        rng=np.random.default_rng(0),
    )
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    for p in parts:
        for g in set(ds.train_groups[p].tolist()):
            assert set(np.flatnonzero(ds.train_groups.numpy() == g)) <= set(p.tolist())


def test_writers_partition_needs_groups() -> None:
    with pytest.raises(ConfigError, match="writers"):
        partition(np.zeros(4, np.int64), 2, "writers", rng=np.random.default_rng(0))


def test_femnist_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"femnist.*TalwalkarLab/leaf"):
        load_dataset("femnist", tmp_path)
    base = _write_femnist(tmp_path)
    f = base / "train" / "all_data_1_train.json"
    f.write_text(f.read_text()[:100])
    with pytest.raises(DatasetError, match=r"all_data_1_train\.json.*truncated or corrupt"):
        load_dataset("femnist", tmp_path)
    f.write_text(json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.0] * 5], "y": [1]}}}))
    with pytest.raises(DatasetError, match=r"all_data_1_train.json: user 'a'"):
        load_dataset("femnist", tmp_path)


# ---------------------------------------------------------------- Ch-MNIST
def test_chmnist_npz(tmp_path: Path) -> None:
    d = tmp_path / "chmnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 5)
    np.savez(d / "chmnist.npz", x=rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), y=y)
    ds = load_dataset("chmnist", tmp_path)
    assert ds.train_x.shape == (32, 3, 64, 64) and ds.test_x.shape == (8, 3, 64, 64)
    assert sorted(ds.test_y.tolist()) == list(range(8))  # stratified: one per class
    assert ds.num_classes == 8 and ds.train_x.dtype == torch.float32
    assert verify_dataset("chmnist", tmp_path) == {"chmnist": "ok"}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_chmnist_tif_folders(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "chmnist" / "Kather_texture_2016_image_tiles_5000"
    rng = np.random.default_rng(0)
    for folder in CLASS_FOLDERS:
        (root / folder).mkdir(parents=True)
        for k in range(2):
            arr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / folder / f"tile_{k}.tif")
    ds = load_dataset("chmnist", tmp_path)
    assert ds.train_x.shape[1:] == (3, 64, 64)
    assert ds.train_x.shape[0] + ds.test_x.shape[0] == 16
    bad = root / "05_DEBRIS" / "tile_1.tif"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DatasetError, match=r"05_DEBRIS/tile_1\.tif"):
        load_dataset("chmnist", tmp_path)


def test_chmnist_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"chmnist\.npz.*01_TUMOR.*zenodo"):
        load_dataset("chmnist", tmp_path)
    d = tmp_path / "chmnist"
    d.mkdir()
    np.savez(d / "chmnist.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1]))
    good = (d / "chmnist.npz").read_bytes()
    (d / "chmnist.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"chmnist\.npz.*truncated or corrupt"):
        load_dataset("chmnist", tmp_path)
    np.savez(d / "chmnist.npz", x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 9]))
    with pytest.raises(DatasetError, match=r"chmnist\.npz: labels"):
        load_dataset("chmnist", tmp_path)

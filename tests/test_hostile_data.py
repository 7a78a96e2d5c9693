"""Hostile and malformed data files: every reader answers with one DatasetError naming the
file, never a traceback from deep inside numpy/pickle/json, and never allocates what a header
merely claims (docs/design.md, hostile-input policy). All files are written to tmp_path."""

from __future__ import annotations

import gzip
import io
import json
import math
import pickle
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tesseract_fl.data import chmnist as chmnist_mod
from tesseract_fl.data.breast_cancer import standardized_split, stratified_split
from tesseract_fl.data.chmnist import CLASS_FOLDERS, read_chmnist_npz
from tesseract_fl.data.cifar import read_cifar_batch
from tesseract_fl.data.idx import MAX_NDIM, read_idx, write_idx
from tesseract_fl.data.leaf import read_leaf_json
from tesseract_fl.data.partition import partition
from tesseract_fl.data.registry import load_dataset
from tesseract_fl.data.shakespeare import read_roles
from tesseract_fl.errors import DatasetError

MIB = 1 << 20


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak traced allocation while calling ``fn`` (which must raise DatasetError)."""
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)


# ------------------------------------------------------------------ IDX: huge/overflowing dims


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "shape",
    [
        (2**31 - 1, 2**31 - 1, 2**31 - 1),
        (65536, 65536, 65536, 65536),  # the product wraps to 0 in int64
        (2**32 - 1, 2**32 - 1),
    ],
)
def test_idx_absurd_shape_refused_before_allocating(
    tmp_path: Path, shape: tuple[int, ...], gz: bool
) -> None:
    content = _idx_header(0x08, shape) + b"\x00" * 16
    path = tmp_path / ("huge.idx.gz" if gz else "huge.idx")
    path.write_bytes(gzip.compress(content) if gz else content)
    shape_text = ", ".join(str(d) for d in shape)
    declared = math.prod(shape)  # exact; int64 arithmetic wraps for these shapes
    with pytest.raises(
        DatasetError,
        match=rf"huge\.idx.*declares shape \({shape_text}\) of uint8 values \({declared} data",
    ):
        read_idx(path)
    assert _peak_bytes(lambda: read_idx(path)) < MIB


def test_idx_max_bytes_bounds_a_consistent_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.idx", np.zeros((10, 10), np.uint8))
    with pytest.raises(DatasetError, match=r"shape \(10, 10\).*100 data bytes.*more than the 50"):
        read_idx(path, max_bytes=50)
    assert read_idx(path, max_bytes=100).shape == (10, 10)


def test_idx_gzip_declaring_more_than_deflate_can_hold(tmp_path: Path) -> None:
    path = tmp_path / "lie.gz"
    path.write_bytes(gzip.compress(_idx_header(0x08, (10**8,)) + b"\x01" * 10))
    with pytest.raises(DatasetError, match=r"lie\.gz is truncated.*decompresses to at most"):
        read_idx(path)
    assert _peak_bytes(lambda: read_idx(path)) < MIB


# ------------------------------------------------------------------ IDX: bad dimension counts


@pytest.mark.parametrize("ndim", [255, MAX_NDIM + 1])
def test_idx_too_many_dimensions(tmp_path: Path, ndim: int) -> None:
    path = tmp_path / "dims.idx"
    path.write_bytes(_idx_header(0x08, (1,) * ndim) + b"\x05")
    with pytest.raises(DatasetError, match=rf"dims\.idx declares {ndim} dimensions; at most"):
        read_idx(path)


def test_idx_more_dims_than_bytes(tmp_path: Path) -> None:
    path = tmp_path / "short.idx"
    path.write_bytes(bytes([0, 0, 0x08, 12]) + b"\x00\x00\x00\x02")
    with pytest.raises(DatasetError, match=r"short\.idx is truncated inside its header"):
        read_idx(path)


def test_write_idx_refuses_what_read_idx_refuses(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"at most {MAX_NDIM} dimensions"):
        write_idx(tmp_path / "x", np.zeros((1,) * (MAX_NDIM + 1), np.uint8))
    arr = np.arange(6, dtype=np.uint8).reshape((1,) * (MAX_NDIM - 1) + (6,))
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "ok", arr)), arr)


# ------------------------------------------------------------------ IDX: gzip bombs and sizes


def _write_gz(path: Path, header: bytes, data: bytes, zeros_after: int) -> None:
    """gzip file of header + data + ``zeros_after`` zero bytes, written in chunks."""
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + data)
        chunk = bytes(MIB)
        for _ in range(zeros_after // MIB):
            fh.write(chunk)


def test_idx_gzip_bomb_is_not_decompressed(tmp_path: Path) -> None:
    path = tmp_path / "bomb.idx.gz"
    _write_gz(path, _idx_header(0x08, (16,)), bytes(range(16)), 48 * MIB)
    assert path.stat().st_size < MIB
    with pytest.raises(DatasetError, match=r"bomb\.idx\.gz has unexpected trailing data after"):
        read_idx(path)
    # bounded by the header's 16 bytes: the 48 MiB behind them are never produced
    assert _peak_bytes(lambda: read_idx(path)) < 4 * MIB


def test_idx_gzip_short_and_exact(tmp_path: Path) -> None:
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(_idx_header(0x0C, (100,)) + b"\x00" * 50))
    with pytest.raises(DatasetError, match=r"short\.gz is truncated.*\(400 data bytes\).*only 50"):
        read_idx(path)
    exact = write_idx(tmp_path / "exact.gz", np.arange(100, dtype=np.int32))
    np.testing.assert_array_equal(read_idx(exact), np.arange(100))


def test_idx_raw_size_checked_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "raw.idx"
    path.write_bytes(_idx_header(0x08, (8,)) + b"\x00" * 8 + b"\x00" * 4 * MIB)
    with pytest.raises(DatasetError, match=r"raw\.idx has 4194304 unexpected trailing bytes"):
        read_idx(path)
    assert _peak_bytes(lambda: read_idx(path)) < MIB


# ------------------------------------------------------------------ MNIST-style loader


def _mnist(
    root: Path, n_train: int = 6, n_test: int = 3, override: dict[str, np.ndarray] | None = None
) -> Path:
    """A tiny valid MNIST folder, with ``override`` (file name -> array) replacing files."""
    rng = np.random.default_rng(0)
    files = {
        "train-images.idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels.idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images.idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels.idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    files.update(override or {})
    for name, arr in files.items():
        write_idx(root / "mnist" / name, arr)
    return root


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, np.nan, 3, 4, 5], np.float32),
        np.array([0, 1, 2.5, 3, 4, 5], np.float64),
    ],
)
def test_float_label_file_refused(tmp_path: Path, labels: np.ndarray) -> None:
    _mnist(tmp_path, override={"train-labels.idx1-ubyte": labels})
    with pytest.raises(
        DatasetError, match=rf"train-labels\.idx1-ubyte: labels must be integers.*{labels.dtype}"
    ):
        load_dataset("mnist", tmp_path)


def test_negative_label_refused(tmp_path: Path) -> None:
    _mnist(tmp_path, override={"t10k-labels.idx1-ubyte": np.array([0, -1, 2], np.int8)})
    with pytest.raises(
        DatasetError, match=r"t10k-labels\.idx1-ubyte: labels must lie in \[0, 10\)"
    ):
        load_dataset("mnist", tmp_path)


def test_empty_training_set_refused(tmp_path: Path) -> None:
    _mnist(tmp_path, n_train=0)
    with pytest.raises(
        DatasetError, match=r"dataset 'mnist': the training set is empty \(0 samples"
    ):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_image_label_count_mismatch(tmp_path: Path, split: str) -> None:
    _mnist(tmp_path, override={f"{split}-labels.idx1-ubyte": np.zeros(2, np.uint8)})
    with pytest.raises(
        DatasetError, match=rf"{split}-labels.* holds 2 labels but .*{split}-images"
    ):
        load_dataset("mnist", tmp_path)


def test_fewer_training_samples_than_clients() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(
        DatasetError, match=r"dataset 'mnist' has 3 training samples to split among 5 clients"
    ):
        partition(np.array([0, 1, 2]), 5, "iid", dataset="mnist", rng=rng)
    with pytest.raises(
        DatasetError, match=r"dataset 'cifar10' has 0 training samples .* 2 clients"
    ):
        partition(np.zeros(0, np.int64), 2, "bias", dataset="cifar10", rng=rng)
    parts = partition(np.arange(5) % 3, 5, "iid", dataset="mnist", rng=rng)
    assert sorted(int(p[0]) for p in parts) == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ CIFAR-10 pickles


def _batch(n: int = 2) -> dict[bytes, Any]:
    rng = np.random.default_rng(0)
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
    }


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch laid out as Python 2's cPickle wrote the real CIFAR files (str = bytes)."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = (
        b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + i(0)
        + b"\x85"
        + s(b"b")
        + b"\x87R("
        + i(1)
        + i(data.shape[0])
        + i(data.shape[1])
        + b"\x86"
        + dtype
        + b"\x89"
        + s(data.tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


def test_cifar_python2_layout_reads_like_numpy(tmp_path: Path) -> None:
    batch = _batch(3)
    raw = _py2_batch(batch[b"data"], batch[b"labels"])
    ref = pickle.loads(raw, encoding="bytes")
    np.testing.assert_array_equal(ref[b"data"], batch[b"data"])
    (tmp_path / "b").write_bytes(raw)
    x, y = read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(x.reshape(3, -1), ref[b"data"])
    assert y.tolist() == ref[b"labels"] and y.dtype == np.int64 and x.flags.writeable


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_numpy_pickle_protocols(tmp_path: Path, protocol: int) -> None:
    batch = _batch(2)
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = read_cifar_batch(tmp_path / "b")
    np.testing.assert_array_equal(x.reshape(2, -1), batch[b"data"])
    assert y.tolist() == batch[b"labels"]


def _malicious(kind: str, marker: Path) -> bytes:
    """A pickle that, loaded by plain ``pickle``, would create ``marker``."""
    m = str(marker)
    if kind == "exec":  # protocol 0: GLOBAL builtins.exec, then REDUCE on a code string
        return b"cbuiltins\nexec\n(V" + f"open({m!r}, 'w').close()".encode() + b"\ntR."
    if kind == "system":  # protocol 4: STACK_GLOBAL os.system
        cmd = f"touch {m}".encode()
        return b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c" + bytes([len(cmd)]) + cmd + b"\x85R."
    if kind == "subprocess":  # subprocess.call(["touch", marker])
        return b"csubprocess\ncall\n((Vtouch\nV" + m.encode() + b"\nltR."
    # a batch dict whose data entry is built by posix.system
    return b"\x80\x02}(C\x04datacposix\nsystem\nV" + f"touch {m}".encode() + b"\n\x85Ru."


@pytest.mark.parametrize(
    ("kind", "refused"),
    [
        ("exec", "builtins.exec"),
        ("system", "os.system"),
        ("subprocess", "subprocess.call"),
        ("posix", "posix.system"),
    ],
)
def test_cifar_malicious_pickle_refused_without_running(
    tmp_path: Path, kind: str, refused: str
) -> None:
    marker = tmp_path / "MARKER"
    (tmp_path / "data_batch_1").write_bytes(_malicious(kind, marker))
    with pytest.raises(DatasetError, match=rf"data_batch_1.*refusing to load global {refused}"):
        read_cifar_batch(tmp_path / "data_batch_1")
    assert not marker.exists()


def test_cifar_codec_doubling_bomb_refused(tmp_path: Path) -> None:
    # _codecs.encode(x, "hex") doubles its input; chained through the memo 18 times it turns
    # 255 bytes into 64 MiB (40 times: into a TiB) from a few hundred bytes of pickle.
    body = b"c_codecs\nencode\nq\x00\x30" + b"C\xff" + b"a" * 255 + b"q\x01\x30"
    body += b"h\x00h\x01X\x03\x00\x00\x00hex\x86Rq\x01\x30" * 18
    path = tmp_path / "bomb"
    path.write_bytes(b"\x80\x02" + body + b"h\x01.")
    with pytest.raises(DatasetError, match=r"bomb.*refusing _codecs\.encode except text to latin1"):
        read_cifar_batch(path)
    assert _peak_bytes(lambda: read_cifar_batch(path)) < 8 * MIB


def test_cifar_ndarray_constructor_refused(tmp_path: Path) -> None:
    # numpy.ndarray((16, 3072)) allocates whatever shape the pickle asks for, without data
    raw = b"\x80\x02}(C\x04datacnumpy\nndarray\nK\x10M\x00\x0c\x86\x85RC\x06labels]u."
    (tmp_path / "b").write_bytes(raw)
    with pytest.raises(DatasetError, match=r"refusing to call numpy\.ndarray"):
        read_cifar_batch(tmp_path / "b")


def test_cifar_object_array_refused(tmp_path: Path) -> None:
    arr = np.empty(2, dtype=object)
    arr[:] = [1, 2]
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": arr, b"labels": [1, 2]}, protocol=2))
    with pytest.raises(DatasetError, match=r"refusing a numpy dtype that is not a plain number"):
        read_cifar_batch(tmp_path / "b")


def test_cifar_array_data_budget(tmp_path: Path) -> None:
    # one 64 KiB data string rebuilt into 200 arrays through the memo: 12.5 MiB of arrays from
    # a 66 KiB file; the reader stops once the arrays exceed what the file can hold
    head = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x00\x30cnumpy\nndarray\nq\x01\x30"
        b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tbq\x02\x30"
        b"T\x00\x00\x01\x00" + bytes(65536) + b"q\x03\x30"
    )
    one = b"h\x00h\x01K\x00\x85U\x01b\x87R(K\x01J\x00\x00\x01\x00\x85h\x02\x89h\x03tb"
    path = tmp_path / "b"
    path.write_bytes(b"\x80\x02" + head + b"](" + one * 200 + b"e.")
    with pytest.raises(DatasetError, match=r"the pickle builds more data than the file holds"):
        read_cifar_batch(path)


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        ([1.5, 2.0], "a float"),
        ([float("nan"), 1], "a float"),
        ([2**70, 1], "must lie in"),
        ([True, 1], "a bool"),
        ([[1, 2], [3]], "a list"),
        ("ab", "must be a list"),
    ],
)
def test_cifar_bad_labels(tmp_path: Path, labels: object, found: str) -> None:
    batch = _batch(2)
    batch[b"labels"] = labels
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=rf"data_batch_2: labels .*{found}"):
        read_cifar_batch(tmp_path / "data_batch_2")


def test_cifar_shared_nested_labels_not_expanded(tmp_path: Path) -> None:
    # labels = 200 references to one list of 200 references to one list of 200 ints: a few
    # kilobytes of pickle that numpy would expand to 8 million labels (at 2000 each: 8e9)
    inner = b"](" + b"K\x01" * 200 + b"e" + b"q\xc8\x30"
    mid = b"](" + b"h\xc8" * 200 + b"e" + b"q\xc9\x30"
    data = pickle.dumps(np.zeros((1, 3072), np.uint8), protocol=2)[2:-1]
    raw = inner + mid + b"}(C\x04data" + data + b"C\x06labels](" + b"h\xc9" * 200 + b"eu."
    path = tmp_path / "b"
    path.write_bytes(b"\x80\x02" + raw)
    with pytest.raises(DatasetError, match=r"labels must be integers in \[0, 10\), found a list"):
        read_cifar_batch(path)


def test_cifar_count_mismatch_and_shapes(tmp_path: Path) -> None:
    batch = _batch(3)
    batch[b"labels"] = [1, 2]
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match=r"2 labels for 3 images"):
        read_cifar_batch(tmp_path / "b")
    batch = _batch(2)
    batch[b"data"] = np.zeros((2, 3072), np.float32)
    (tmp_path / "b").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        DatasetError, match=r"expected uint8 data of shape \[N, 3072\], found float32"
    ):
        read_cifar_batch(tmp_path / "b")


def test_cifar_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "data_batch_1").symlink_to("/dev/null")
    with pytest.raises(DatasetError, match=r"data_batch_1: not a regular file"):
        read_cifar_batch(tmp_path / "data_batch_1")


# ------------------------------------------------------------------ Ch-MNIST npz and tiles


def _chmnist_dir(root: Path) -> Path:
    d = root / "chmnist"
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_chmnist_npz_header_bomb_refused_before_allocating(tmp_path: Path) -> None:
    path = _chmnist_dir(tmp_path) / "chmnist.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 3, 1000, 1000)}
    )
    labels = io.BytesIO()
    np.save(labels, np.zeros(4, np.int64))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + bytes(100))
        zf.writestr("y.npy", labels.getvalue())
    with pytest.raises(
        DatasetError, match=r"chmnist\.npz: array x\.npy declares shape \[10000000, 3, 1000, 1000\]"
    ):
        load_dataset("chmnist", tmp_path)
    assert _peak_bytes(lambda: read_chmnist_npz(path)) < MIB


def test_chmnist_npz_member_size_beyond_deflate_ratio(tmp_path: Path) -> None:
    path = _chmnist_dir(tmp_path) / "chmnist.npz"
    np.savez_compressed(path, x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1]))
    data = bytearray(path.read_bytes())
    # raise the declared uncompressed size of x.npy in its central-directory entry
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("x.npy")
    cd = data.index(b"PK\x01\x02")  # the first central-directory entry: x.npy
    struct.pack_into("<I", data, cd + 24, info.compress_size * 2000)  # its uncompressed size
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"x\.npy declares \d+ bytes but its \d+ stored bytes"):
        read_chmnist_npz(path)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (
            np.zeros((0, 8, 8, 3), np.uint8),
            np.zeros(0, np.int64),
            r"'x' must hold at least one tile",
        ),
        (
            np.zeros((4, 0, 0, 3), np.uint8),
            np.zeros(4, np.int64),
            r"'x' must hold at least one tile",
        ),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0.5, 1.0]), r"'y' must hold 2 integer"),
        (np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1, 2]), r"'y' must hold 2 integer"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), np.array([0, 1]), r"'x' must be uint8"),
    ],
)
def test_chmnist_npz_bad_arrays(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    np.savez(_chmnist_dir(tmp_path) / "chmnist.npz", x=x, y=y)
    with pytest.raises(DatasetError, match=rf"chmnist\.npz: {message}"):
        load_dataset("chmnist", tmp_path)


def test_chmnist_plain_npy_under_npz_name(tmp_path: Path) -> None:
    path = _chmnist_dir(tmp_path) / "chmnist.npz"
    with path.open("wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(DatasetError, match=r"chmnist\.npz: not a readable npz file"):
        load_dataset("chmnist", tmp_path)


def _tile_folders(root: Path, side: int) -> Path:
    image = pytest.importorskip("PIL.Image")
    base = root / "chmnist"
    for folder in CLASS_FOLDERS:
        (base / folder).mkdir(parents=True)
        image.new("RGB", (side, side), (10, 20, 30)).save(base / folder / "t.png")
    return base


def test_chmnist_oversized_tile_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tile_folders(tmp_path, 20)
    monkeypatch.setattr(chmnist_mod, "_MAX_TILE_PIXELS", 399)
    with pytest.raises(DatasetError, match=r"01_TUMOR/t\.png: image of 20x20 pixels, more than"):
        load_dataset("chmnist", tmp_path)


def test_chmnist_decompression_bomb_is_a_dataset_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tile_folders(tmp_path, 20)
    image = pytest.importorskip("PIL.Image")
    monkeypatch.setattr(image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses > 2x this at open
    with pytest.raises(DatasetError, match=r"01_TUMOR/t\.png: not a readable image"):
        load_dataset("chmnist", tmp_path)


# ------------------------------------------------------------------ FEMNIST (LEAF JSON)

PIXELS = [0.5] * 784


def _leaf(path: Path, users: object, user_data: object) -> Path:
    path.write_text(json.dumps({"users": users, "user_data": user_data}))
    return path


@pytest.mark.parametrize(
    ("y", "message"),
    [
        ([1.7], r"labels must be integers in \[0, 62\), found a float"),
        ([True], r"found a bool"),
        (["3"], r"found a str"),
        ([2**70], r"found an integer far out of range"),
        ([62], r"found 62"),
        ([-1], r"found -1"),
        (5, r"'y' must be a list"),
    ],
)
def test_leaf_bad_labels(tmp_path: Path, y: object, message: str) -> None:
    path = _leaf(tmp_path / "a.json", ["w"], {"w": {"x": [PIXELS], "y": y}})
    with pytest.raises(DatasetError, match=rf"a\.json: user 'w': .*{message}"):
        read_leaf_json(path)


def _raw_leaf(row: str, y: str) -> str:
    """LEAF JSON text for one writer 'w' with one pixel row and labels (JSON texts, so that
    they may hold NaN)."""
    return '{"users": ["w"], "user_data": {"w": {"x": [' + row + '], "y": ' + y + "}}}"


def test_leaf_nan_label_and_pixels(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(_raw_leaf(json.dumps(PIXELS), "[NaN]"))
    with pytest.raises(DatasetError, match=r"user 'w': labels must be integers.*found a float"):
        read_leaf_json(path)
    bad = json.dumps([0.5] * 783)[:-1] + ", NaN]"
    path.write_text(_raw_leaf(bad, "[1]"))
    with pytest.raises(DatasetError, match=r"user 'w': non-finite pixel values"):
        read_leaf_json(path)
    _leaf(path, ["w"], {"w": {"x": [["0.5"] * 784], "y": [1]}})
    with pytest.raises(DatasetError, match=r"user 'w': 'x' must hold numbers"):
        read_leaf_json(path)


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([["w"]], r"'users' must be a list of writer names"),
        ([1], r"'users' must be a list of writer names"),
        (["w", "w"], r"writer 'w' is listed twice"),
    ],
)
def test_leaf_bad_users(tmp_path: Path, users: object, message: str) -> None:
    path = _leaf(tmp_path / "a.json", users, {"w": {"x": [PIXELS], "y": [1]}})
    with pytest.raises(DatasetError, match=rf"a\.json: {message}"):
        read_leaf_json(path)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"users": [' + "9" * 5000 + "]}"],
    ids=["deep", "huge-int"],
)
def test_leaf_unparsable_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=r"a\.json: not a readable LEAF JSON file"):
        read_leaf_json(path)


def test_leaf_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "a.json").symlink_to("/dev/null")
    with pytest.raises(DatasetError, match=r"a\.json: not a regular file"):
        read_leaf_json(tmp_path / "a.json")


# ------------------------------------------------------------------ Shakespeare, Breast Cancer


def test_shakespeare_not_a_regular_file(tmp_path: Path) -> None:
    link = tmp_path / "hamlet_gut.txt"
    link.symlink_to("/dev/null")  # a link to /dev/zero would be read forever
    with pytest.raises(DatasetError, match=r"hamlet_gut\.txt: not a regular file"):
        read_roles([link])


def test_split_refuses_empty_and_non_finite() -> None:
    with pytest.raises(DatasetError, match=r"cannot split an empty data set \(0 samples\)"):
        stratified_split(np.zeros(0, np.int64), 0.2, 0)
    x = np.ones((10, 3))
    x[4, 1] = np.nan
    with pytest.raises(DatasetError, match=r"features of shape \[10, 3\] hold NaN or infinite"):
        standardized_split(x, np.arange(10) % 2, 0.2, 0, axis=(0,))

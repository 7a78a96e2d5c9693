"""Reader and writer for the IDX format (MNIST, Fashion-MNIST), raw or gzip-compressed.

Layout: two zero bytes, a dtype code byte, a byte giving the number of dimensions, one
big-endian uint32 per dimension, then the values in big-endian C order.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from tesseract_fl.errors import DatasetError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the decompressed content of ``path`` (gzip detected by its magic bytes)."""
    if not path.exists():
        raise DatasetError(
            f"IDX file not found: {path}. Check the path or fetch the dataset "
            "(`tesseract-fl datasets fetch NAME`)."
        )
    if not path.is_file():
        raise DatasetError(f"IDX path is not a regular file: {path}.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"IDX file {path} looks gzip-compressed but cannot be decompressed ({exc}); "
            "the download is probably incomplete or corrupt: delete it and fetch it again."
        ) from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array of its stored shape.

    Raises:
        DatasetError: the file is missing, not IDX, uses an unknown dtype code, is corrupt
            gzip, or holds fewer or more data bytes than its header declares.
    """
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4:
        raise DatasetError(
            f"IDX file {p} is truncated: {len(data)} bytes, shorter than the 4-byte header."
        )
    if data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{p} is not an IDX file: it must start with two zero bytes, found "
            f"{data[:2].hex()}. Check that the right file is in place."
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DatasetError(
            f"IDX file {p} has unknown dtype code 0x{code:02X} (allowed: {allowed}); "
            "the file is corrupt or not IDX."
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DatasetError(
            f"IDX file {p} is truncated inside its header ({len(data)} bytes, the header "
            f"declares {ndim} dimensions and needs {header_len}). Fetch it again."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise DatasetError(
            f"IDX file {p} is truncated: header declares shape {shape} ({expected} data "
            f"bytes) but only {actual} are present. Delete it and fetch it again."
        )
    if actual > expected:
        raise DatasetError(
            f"IDX file {p} has {actual - expected} unexpected trailing bytes after the "
            f"{expected} data bytes its header (shape {shape}) declares; the file is corrupt."
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as IDX (gzip-compressed if ``path`` ends with ``.gz``), atomically.

    The dtype must be one of uint8, int8, int16, int32, float32, float64.
    """
    p = Path(path)
    arr = np.asarray(array)
    code = next(
        (c for c, dt in IDX_DTYPES.items() if dt.newbyteorder("=") == arr.dtype.newbyteorder("=")),
        None,
    )
    if code is None:
        raise DatasetError(
            f"cannot write dtype {arr.dtype} as IDX; use one of uint8, int8, int16, int32, "
            "float32, float64."
        )
    if arr.ndim > 255:
        raise DatasetError(f"IDX supports at most 255 dimensions, got {arr.ndim}.")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if p.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        Path(tmp).chmod(0o644)  # mkstemp creates 0600
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p

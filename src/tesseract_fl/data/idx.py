"""Reader and writer for the IDX format (MNIST, Fashion-MNIST), raw or gzip-compressed.

Layout: two zero bytes, a dtype code byte, a byte giving the number of dimensions, one
big-endian uint32 per dimension, then the values in big-endian C order.

Reading is bounded by the header (docs/design.md, hostile-input policy): the header is read
first and checked (dimension count, the product of the dimensions in exact integers, the
bytes the file can possibly hold) before anything is allocated, then exactly the declared
number of data bytes is read, plus one to detect trailing data; a gzip stream is
decompressed chunk by chunk, never as a whole.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from tesseract_fl.errors import DatasetError

__all__ = ["IDX_DTYPES", "MAX_IDX_BYTES", "MAX_NDIM", "read_idx", "write_idx"]

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Most dimensions an IDX file may declare: images have 3 and labels 1, and numpy itself
#: cannot build arrays with more than 64, so a larger count means a corrupt header.
MAX_NDIM = 16

#: Most data bytes ``read_idx`` accepts by default (4 GiB, far above any IDX dataset: the
#: MNIST training images hold 47 MB), so that a header cannot make it allocate without bound.
MAX_IDX_BYTES = 1 << 32

_GZIP_MAGIC = b"\x1f\x8b"
#: Deflate cannot expand data by more than 1032:1, so a gzip file of n bytes holds at most
#: this many times n decompressed bytes; a header declaring more is certainly wrong.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


class _Reader(Protocol):
    """A binary stream (a plain file or a gzip decompressor)."""

    def read(self, size: int = -1, /) -> bytes: ...


def _read_up_to(fh: _Reader, n: int) -> bytes:
    """Read ``n`` bytes from ``fh``, fewer only at the end of the stream."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        part = fh.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _fill(fh: _Reader, out: np.ndarray) -> int:
    """Read into the bytes of the contiguous array ``out`` chunk by chunk; return the count."""
    view = out.reshape(-1).view(np.uint8)
    got = 0
    while got < view.size:
        part = fh.read(min(view.size - got, _CHUNK))
        if not part:
            break
        view[got : got + len(part)] = np.frombuffer(part, dtype=np.uint8)
        got += len(part)
    return got


def _parse(p: Path, fh: _Reader, file_size: int, compressed: bool, max_bytes: int) -> np.ndarray:
    """Read and check the header from ``fh``, then the data it declares (see module docstring)."""
    head = _read_up_to(fh, 4)
    if len(head) < 4:
        raise DatasetError(
            f"IDX file {p} is truncated: {len(head)} bytes, shorter than the 4-byte header."
        )
    if head[0] != 0 or head[1] != 0:
        raise DatasetError(
            f"{p} is not an IDX file: it must start with two zero bytes, found "
            f"{head[:2].hex()}. Check that the right file is in place."
        )
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DatasetError(
            f"IDX file {p} has unknown dtype code 0x{code:02X} (allowed: {allowed}); "
            "the file is corrupt or not IDX."
        )
    if ndim > MAX_NDIM:
        raise DatasetError(
            f"IDX file {p} declares {ndim} dimensions; at most {MAX_NDIM} are allowed (images "
            "have 3, labels 1): the header is corrupt or the file is not IDX."
        )
    header_len = 4 + 4 * ndim
    dims = _read_up_to(fh, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DatasetError(
            f"IDX file {p} is truncated inside its header ({4 + len(dims)} bytes, the header "
            f"declares {ndim} dimensions and needs {header_len}). Fetch it again."
        )
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # exact: Python integers cannot overflow
    if expected > max_bytes:
        raise DatasetError(
            f"IDX file {p} declares shape {shape} of {dtype.name} values ({expected} data "
            f"bytes), more than the {max_bytes} allowed; the header is corrupt."
        )
    if not compressed:
        actual = file_size - header_len
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
    elif header_len + expected > _MAX_DEFLATE_RATIO * file_size:
        raise DatasetError(
            f"IDX file {p} is truncated: header declares shape {shape} ({expected} data bytes) "
            f"but a {file_size}-byte gzip file decompresses to at most "
            f"{_MAX_DEFLATE_RATIO * file_size} bytes. Delete it and fetch it again."
        )
    out = np.empty(shape, dtype=dtype.newbyteorder("="))
    got = _fill(fh, out)
    if got < expected:
        raise DatasetError(
            f"IDX file {p} is truncated: header declares shape {shape} ({expected} data "
            f"bytes) but only {got} are present. Delete it and fetch it again."
        )
    if fh.read(1):
        raise DatasetError(
            f"IDX file {p} has unexpected trailing data after the {expected} data bytes its "
            f"header (shape {shape}) declares; the file is corrupt."
        )
    if not dtype.isnative:
        out.byteswap(inplace=True)  # the bytes were read big-endian into a native array
    return out


def read_idx(path: str | os.PathLike[str], *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by its magic bytes) into a native-endian numpy
    array of its stored shape.

    ``max_bytes`` bounds the data size a header may declare.

    Raises:
        DatasetError: the file is missing, not IDX, uses an unknown dtype code or too many
            dimensions, declares more data than allowed or than the file can hold, is corrupt
            gzip, or holds fewer or more data bytes than its header declares.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(
            f"IDX file not found: {p}. Check the path or fetch the dataset "
            "(`tesseract-fl datasets fetch NAME`)."
        )
    if not p.is_file():
        raise DatasetError(f"IDX path is not a regular file: {p}.")
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {p}: {exc}") from exc
    with raw:
        try:
            file_size = os.fstat(raw.fileno()).st_size
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
        except OSError as exc:
            raise DatasetError(f"cannot read IDX file {p}: {exc}") from exc
        if not compressed:
            try:
                return _parse(p, raw, file_size, False, max_bytes)
            except OSError as exc:
                raise DatasetError(f"cannot read IDX file {p}: {exc}") from exc
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                return _parse(p, fh, file_size, True, max_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(
                f"IDX file {p} looks gzip-compressed but cannot be decompressed ({exc}); "
                "the download is probably incomplete or corrupt: delete it and fetch it again."
            ) from exc


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
    if arr.ndim > MAX_NDIM:
        raise DatasetError(
            f"cannot write a {arr.ndim}-dimensional array as IDX; at most {MAX_NDIM} "
            "dimensions are allowed."
        )
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

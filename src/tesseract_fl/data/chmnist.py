"""Ch-MNIST: Kather et al. 2016 colorectal histology tiles, 8 classes (paper Fig. 3b).

No package ships it, and nothing is downloaded here (``tesseract-fl datasets prepare chmnist``
downloads the zip where there is internet, see ``prepare.py``). Two layouts are read from
``<data_dir>/chmnist/`` (the first one found wins):

1. ``chmnist.npz`` with arrays ``x`` (uint8 ``[N, H, W, 3]`` RGB, channels last, or
   ``[N, 3, H, W]``) and ``y`` (integer labels in 0..7, the class order below).
2. The image folders of Kather's ``Kather_texture_2016_image_tiles_5000.zip``
   (https://zenodo.org/record/53169): ``01_TUMOR/ 02_STROMA/ 03_COMPLEX/ 04_LYMPHO/
   05_DEBRIS/ 06_MUCOSA/ 07_ADIPOSE/ 08_EMPTY/`` of ``.tif`` tiles (150x150 RGB), either
   directly in ``chmnist/`` or in one subfolder of it. Read with Pillow.

Tiles are resized to ``IMAGE_SIZE`` = 64 pixels (bilinear) for the ``chmnist_cnn`` model. The
data set has no official split, so ours is a stratified 80/20 train/test split (seed 0, as for
Breast Cancer); pixels are scaled to [0, 1] and standardized per channel with the training
tiles' mean and standard deviation.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from tesseract_fl.data.breast_cancer import SPLIT_SEED, TEST_FRACTION, standardized_split
from tesseract_fl.data.registry import DATA_DIR_ENV, Dataset, default_data_dir
from tesseract_fl.errors import DatasetError

__all__ = [
    "CLASS_FOLDERS",
    "IMAGE_SIZE",
    "NPZ_NAME",
    "load_chmnist",
    "read_chmnist_folders",
    "read_chmnist_npz",
]

CLASS_FOLDERS: tuple[str, ...] = (
    "01_TUMOR",
    "02_STROMA",
    "03_COMPLEX",
    "04_LYMPHO",
    "05_DEBRIS",
    "06_MUCOSA",
    "07_ADIPOSE",
    "08_EMPTY",
)
IMAGE_SIZE = 64
NPZ_NAME = "chmnist.npz"
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Most pixels one tile image may declare (Kather's tiles have 150x150); checked before
#: Pillow decodes it, so a small compressed image cannot expand without bound.
_MAX_TILE_PIXELS = 4096 * 4096
#: Deflate cannot expand data by more than 1032:1: a zip member declaring more is corrupt.
_MAX_DEFLATE_RATIO = 1032
_NPY_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, 3, H, W]`` -> float32 ``[N, 3, size, size]`` in [0, 1] (bilinear)."""
    t = torch.from_numpy(x).to(torch.float32).div_(255.0)
    if t.shape[-1] != size or t.shape[-2] != size:
        t = torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return t.clamp_(0.0, 1.0).numpy()


def _check_npz_members(p: Path) -> None:
    """Check, before numpy allocates anything, that the npz holds ``x.npy`` and ``y.npy``
    whose headers declare exactly the bytes their zip members hold, and that those sizes are
    possible for the members' compressed sizes (docs/design.md, hostile-input policy)."""
    with zipfile.ZipFile(p) as zf:
        names = zf.namelist()
        for name in ("x.npy", "y.npy"):
            if name not in names:
                found = [n.removesuffix(".npy") for n in names]
                raise DatasetError(f"{p}: expected arrays 'x' and 'y', found {found}.")
            info = zf.getinfo(name)
            if info.flag_bits & 0x1 or info.compress_type not in (
                zipfile.ZIP_STORED,
                zipfile.ZIP_DEFLATED,
            ):
                raise DatasetError(
                    f"{p}: array {name} is encrypted or compressed with an unsupported method; "
                    "write the file with numpy.savez or numpy.savez_compressed."
                )
            ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
            if info.file_size > ratio * info.compress_size:
                raise DatasetError(
                    f"{p}: array {name} declares {info.file_size} bytes but its "
                    f"{info.compress_size} stored bytes can hold at most "
                    f"{ratio * info.compress_size}; the file is corrupt."
                )
            with zf.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                reader = _NPY_READERS.get(version)
                if reader is None:
                    raise DatasetError(
                        f"{p}: array {name} uses npy format version {version}; only 1.0 and "
                        "2.0 are read (write the file with numpy.savez)."
                    )
                shape, _fortran, dtype = reader(fh)
                header_len = fh.tell()
            if dtype.hasobject:
                raise DatasetError(f"{p}: array {name} holds Python objects, not numbers.")
            declared = math.prod(shape) * dtype.itemsize
            if header_len + declared != info.file_size:
                raise DatasetError(
                    f"{p}: array {name} declares shape {list(shape)} of {dtype} "
                    f"({declared} data bytes) but holds {info.file_size - header_len}; "
                    "the file is truncated or corrupt."
                )


def read_chmnist_npz(
    path: str | os.PathLike[str], size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``chmnist.npz``: (float32 ``[N, 3, size, size]`` in [0, 1], int64 ``[N]``).

    The arrays' headers are checked against the zip members before anything is read.

    Raises:
        DatasetError: unreadable/truncated file, not an npz, missing arrays, headers that do
            not match the data, no tiles, or wrong shapes/labels.
    """
    p = Path(path)
    try:
        _check_npz_members(p)
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise DatasetError(f"{p}: expected arrays 'x' and 'y', found {z.files}.")
            x = np.asarray(z["x"])
            y = np.asarray(z["y"])
    except DatasetError:
        raise
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
        RuntimeError,
        NotImplementedError,
    ) as exc:
        raise DatasetError(
            f"{p}: not a readable npz file ({type(exc).__name__}: {exc}); it is truncated "
            "or corrupt."
        ) from exc
    if x.ndim != 4 or x.dtype != np.uint8 or 3 not in (x.shape[1], x.shape[3]):
        raise DatasetError(
            f"{p}: 'x' must be uint8 [N, H, W, 3] or [N, 3, H, W], found {x.dtype} {list(x.shape)}."
        )
    if x.shape[1] != 3:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise DatasetError(
            f"{p}: 'x' must hold at least one tile of at least 1x1 pixels, found "
            f"{list(x.shape)} (as [N, 3, H, W])."
        )
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(
            f"{p}: 'y' must hold {x.shape[0]} integer labels, found {y.dtype} {list(y.shape)}."
        )
    if y.size and (int(y.min()) < 0 or int(y.max()) >= len(CLASS_FOLDERS)):
        raise DatasetError(f"{p}: labels must lie in [0, 8).")
    return _resize(x, size), y.astype(np.int64)


def _class_root(base: Path) -> Path | None:
    """``base`` if it holds the class folders, else its single subfolder that does."""
    if (base / CLASS_FOLDERS[0]).is_dir():
        return base
    if base.is_dir():
        for sub in sorted(base.iterdir()):
            if sub.is_dir() and (sub / CLASS_FOLDERS[0]).is_dir():
                return sub
    return None


def read_chmnist_folders(root: Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Read the eight class folders under ``root`` (files sorted by name within a class).

    Raises:
        DatasetError: Pillow missing, a class folder missing or empty, or an unreadable or
            oversized tile.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow is a declared dependency
        raise DatasetError(
            f"{root}: reading the Ch-MNIST image folders needs Pillow (`pip install pillow`); "
            f"or convert them to {NPZ_NAME}."
        ) from exc
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for label, folder in enumerate(CLASS_FOLDERS):
        d = root / folder
        files = (
            sorted(f for f in d.glob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
            if d.is_dir()
            else []
        )
        if not files:
            raise DatasetError(f"{d}: class folder missing or without .tif tiles.")
        for f in files:
            try:
                with Image.open(f) as im:
                    width, height = im.size
                    if width * height > _MAX_TILE_PIXELS:
                        raise DatasetError(
                            f"{f}: image of {width}x{height} pixels, more than the "
                            f"{_MAX_TILE_PIXELS} a tile may have (Kather's tiles are 150x150)."
                        )
                    rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    arr = np.asarray(rgb, dtype=np.uint8)
            except (
                OSError,
                UnidentifiedImageError,
                ValueError,
                Image.DecompressionBombError,
            ) as exc:
                raise DatasetError(
                    f"{f}: not a readable image ({exc}); the file is truncated or corrupt."
                ) from exc
            xs.append(arr.transpose(2, 0, 1))
            ys.append(label)
    return np.stack(xs).astype(np.float32) / 255.0, np.asarray(ys, dtype=np.int64)


def load_chmnist(data_dir: str | os.PathLike[str] | None = None, size: int = IMAGE_SIZE) -> Dataset:
    """Ch-MNIST as float32 ``[N, 3, size, size]`` standardized tiles, 8 classes.

    Raises:
        DatasetError: neither layout present (the message says what to place where) or a
            bad file.
    """
    base = default_data_dir(data_dir) / "chmnist"
    npz = base / NPZ_NAME
    if npz.is_file():
        x, y = read_chmnist_npz(npz, size)
        source = str(npz)
    else:
        root = _class_root(base)
        if root is None:
            raise DatasetError(
                f"dataset 'chmnist': neither {npz} nor the class folders "
                f"{', '.join(CLASS_FOLDERS)} found under {base}. Run `tesseract-fl datasets "
                "prepare chmnist` (downloads it where there is internet; nothing is downloaded "
                "at run time), or unzip Kather_texture_2016_image_tiles_5000.zip "
                f"(https://zenodo.org/record/53169) into {base}, or place an npz file with "
                f"arrays x (uint8 [N, H, W, 3]) and y (labels 0..7) at {npz}; or point "
                f"--data-dir / ${DATA_DIR_ENV} at a directory holding such a chmnist/ folder."
            )
        x, y = read_chmnist_folders(root, size)
        source = str(root)
    return Dataset(
        name="chmnist",
        **standardized_split(x, y, TEST_FRACTION, SPLIT_SEED, axis=(0, 2, 3)),
        num_classes=len(CLASS_FOLDERS),
        source=source,
    )

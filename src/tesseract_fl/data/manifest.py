"""Dataset manifests: what ``datasets prepare`` installed, so that ``verify`` can name a file
that was later truncated, changed or removed.

``<data_dir>/<name>/manifest.json`` holds the dataset name, where it came from (source, method,
the archive's name / URL / size / SHA-256 when there was one), the UTC date, the tesseract-fl
version, and one entry per file: path (relative to the dataset folder, or absolute for a file
outside it such as scikit-learn's shipped CSV), size in bytes and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tesseract_fl.errors import DatasetError

__all__ = [
    "MANIFEST_NAME",
    "check_manifest",
    "file_entry",
    "file_sha256",
    "read_manifest",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
_FORMAT = 1


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path, directory: Path) -> dict[str, Any]:
    """Manifest entry of ``path``: relative to ``directory`` when inside it, else absolute."""
    try:
        rel = path.relative_to(directory).as_posix()
    except ValueError:
        rel = str(path.resolve())
    return {"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)}


def write_manifest(
    directory: Path,
    name: str,
    *,
    source: str,
    method: str,
    files: list[dict[str, Any]],
    archive: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/manifest.json`` atomically and return its path."""
    from tesseract_fl import __version__

    manifest: dict[str, Any] = {
        "format": _FORMAT,
        "dataset": name,
        "source": source,
        "method": method,
        "archive": archive,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tesseract_fl": __version__,
        "total_bytes": sum(int(f["size"]) for f in files),
        "files": sorted(files, key=lambda f: str(f["path"])),
    }
    if extra:
        manifest.update(extra)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST_NAME}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1)
            fh.write("\n")
        Path(tmp).chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest in ``directory`` (None if there is none).

    Raises:
        DatasetError: the manifest exists but is not a valid manifest (names the file).
    """
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(
            f"{path}: unreadable manifest ({exc}); delete it and run `tesseract-fl datasets "
            "prepare` again."
        ) from exc
    files = obj.get("files") if isinstance(obj, dict) else None
    if not isinstance(files, list) or not all(
        isinstance(f, dict)
        and isinstance(f.get("path"), str)
        and isinstance(f.get("size"), int)
        and isinstance(f.get("sha256"), str)
        for f in files
    ):
        raise DatasetError(
            f"{path}: not a tesseract-fl manifest (expected a 'files' list of path/size/sha256); "
            "delete it and run `tesseract-fl datasets prepare` again."
        )
    return dict(obj)


def check_manifest(directory: Path) -> dict[str, str] | None:
    """Check every file the manifest lists: ``{path: problem}`` for the files that are missing,
    have another size (partial copy) or another SHA-256 (corrupt or changed); ``{}`` when all
    match; None without a manifest. An unreadable manifest is reported under its own name."""
    try:
        manifest = read_manifest(directory)
    except DatasetError as exc:
        return {MANIFEST_NAME: str(exc)}
    if manifest is None:
        return None
    problems: dict[str, str] = {}
    for entry in manifest["files"]:
        rel = entry["path"]
        path = Path(rel) if Path(rel).is_absolute() else directory / rel
        if not path.is_file():
            problems[str(path)] = f"missing (listed in {MANIFEST_NAME})"
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            problems[str(path)] = (
                f"{size:,} bytes but {MANIFEST_NAME} says {entry['size']:,}: a partial or "
                "changed file; run `tesseract-fl datasets prepare` again"
            )
            continue
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            problems[str(path)] = (
                f"SHA-256 {digest} differs from {MANIFEST_NAME} ({entry['sha256']}): the file is "
                "corrupt or was changed; run `tesseract-fl datasets prepare` again"
            )
    return problems

"""Run checkpoints: everything needed to continue an interrupted run bit for bit.

A checkpoint is one file ``<store dir>/checkpoints/<store name>/<run id>.pt`` (one folder per
store, so two stores in one folder never touch each other's checkpoints). The file is

    MAGIC (8 bytes) | SHA-256 of the body (32 bytes) | body

where the body is ``torch.save`` of a dict of plain data and tensors:

- ``format``: :data:`CHECKPOINT_FORMAT` (a file of another format is not loaded);
- ``run_id``: the run it belongs to;
- ``round``: the number of rounds done (the next round to run);
- ``sim``: :meth:`FedSGDSimulation.state_dict` (model, sampler cursors, defense state, the
  simulation's RNG, the last update's sign);
- ``runner``: the runner's own progress (last test accuracy/loss, train and wall seconds so far);
- ``torch_rng``: the global torch CPU RNG state (kept so that a model with dropout would still
  resume identically);
- ``versions``: the software versions that produced it (numbers depend on them);
- ``execution``: settings outside the run id that change numbers (gradient backend, device):
  a resume under other ones is refused.

Loading never runs code: the body is read with ``torch.load(weights_only=True)``, which admits
only tensors and plain containers, and only after its checksum matched, so a planted file or a
flipped byte is refused before anything is unpickled (docs/design.md, "Checkpoints").

Writes are atomic (temp file in the same folder, fsync, ``os.replace``), so a process killed
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "checkpoint_path",
    "load_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 2
MAGIC = b"TFLCKPT\x02"
_DIGEST = 32
#: Keys every checkpoint holds.
REQUIRED_KEYS = ("run_id", "round", "sim", "runner", "versions", "execution")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of ours (foreign, corrupt, or another format)."""


def checkpoint_path(store_path: str | Path, run_id: str) -> Path:
    """Where the checkpoint of ``run_id`` in the store at ``store_path`` lives."""
    store = Path(store_path)
    return store.parent / "checkpoints" / store.stem / f"{run_id}.pt"


def _body(payload: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a reader sees the old file or the new one."""
    body = _body(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(body).digest())
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX; directories cannot be opened on Windows).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint; :class:`CheckpointError` for a file that is not a usable one of ours.

    The checksum is verified before the body is parsed, and the body is parsed with
    ``weights_only=True``: no code in the file ever runs. Tensors go back to the device they
    were saved from (a CUDA run's defense state stays on the GPU), or to the CPU where CUDA is
    missing.
    """
    raw = Path(path).read_bytes()
    head = len(MAGIC) + _DIGEST
    if len(raw) < head or raw[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"not a tesseract-fl checkpoint of format {CHECKPOINT_FORMAT}")
    digest, body = raw[len(MAGIC) : head], raw[head:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError("its checksum does not match its contents (corrupt or altered)")
    where = None if torch.cuda.is_available() else "cpu"
    try:
        state = torch.load(io.BytesIO(body), map_location=where, weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain data
        raise CheckpointError(f"its contents cannot be read safely ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a tesseract-fl checkpoint of format {CHECKPOINT_FORMAT}")
    for key in REQUIRED_KEYS:
        if key not in state:
            raise CheckpointError(f"checkpoint is missing {key!r}")
    return state


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint if present (a finished run needs none)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

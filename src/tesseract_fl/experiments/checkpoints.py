"""Run checkpoints: everything needed to continue an interrupted run bit for bit (DESIGN.md 6).

A checkpoint is one ``torch.save`` file ``<store dir>/checkpoints/<run id>.pt`` holding a dict:

- ``format``: :data:`CHECKPOINT_FORMAT` (a file of another format is not loaded);
- ``run_id``: the run it belongs to;
- ``round``: the number of rounds done (the next round to run);
- ``sim``: :meth:`FedSGDSimulation.state_dict` (model, sampler cursors, defense state, the
  simulation's RNG, the last update's sign);
- ``runner``: the runner's own progress (last test accuracy/loss, train and wall seconds so far);
- ``torch_rng``: the global torch CPU RNG state (nothing draws from it today; kept so that a
  model with dropout would still resume identically);
- ``versions``: the software versions that produced it (numbers depend on them).

Writes are atomic (temp file in the same folder, fsync, ``os.replace``), so a process killed
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_path",
    "load_checkpoint",
    "remove_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1


def checkpoint_path(store_path: str | Path, run_id: str) -> Path:
    """Where the checkpoint of ``run_id`` lives: beside the store, in ``checkpoints/``."""
    return Path(store_path).parent / "checkpoints" / f"{run_id}.pt"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
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
    """Read a checkpoint; raises ValueError for a file that is not one of ours.

    Tensors go back to the device they were saved from (a CUDA run's defense state stays on the
    GPU, so the resumed rounds take the same code paths), or to the CPU where CUDA is missing.
    ``weights_only=False``: the file holds plain Python objects besides tensors, and it is our
    own file next to the results store (never a downloaded one).
    """
    where = None if torch.cuda.is_available() else "cpu"
    state = torch.load(path, map_location=where, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a tesseract-fl checkpoint of format {CHECKPOINT_FORMAT}")
    for key in ("run_id", "round", "sim", "runner", "versions"):
        if key not in state:
            raise ValueError(f"checkpoint is missing {key!r}")
    return state


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint if present (a finished run needs none)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

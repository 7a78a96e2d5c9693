"""Checkpoints never run code, detect a flipped byte, and refuse a resume under other settings."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from tesseract_fl.experiments.checkpoints import (
    MAGIC,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment


def _stop_at(n: int):  # type: ignore[no-untyped-def]
    def progress(done: int, total: int, info: object) -> None:
        if done == n:
            raise KeyboardInterrupt

    return progress


class _Planted:
    """Unpickling this object runs ``os.system``-like code (here: it writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pwned"))


def test_planted_pickle_is_never_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """A checkpoint planted under a predictable run id must not execute when a run resumes."""
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "checkpoint_every=2"])
    store = tmp_path / "s.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, store, progress=_stop_at(3))
    ckpt = checkpoint_path(store, cfg.run_id())
    marker = tmp_path / "marker"
    # Both the old layout (a bare torch.save file) and ours with a valid checksum.
    evil = {"format": 2, "payload": _Planted(marker)}
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save(evil, buf)
    body = buf.getvalue()
    for blob in (body, MAGIC + hashlib.sha256(body).digest() + body, pickle.dumps(evil)):
        ckpt.write_bytes(blob)
        with pytest.raises(CheckpointError):
            load_checkpoint(ckpt)
        assert not marker.exists()
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        summary = run_experiment(cfg, store)
    assert summary.resumed_from is None and not marker.exists()


def test_flipped_byte_is_detected(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "checkpoint_every=2"])
    store = tmp_path / "s.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, store, progress=_stop_at(3))
    ckpt = checkpoint_path(store, cfg.run_id())
    good = ckpt.read_bytes()
    assert load_checkpoint(ckpt)["round"] == 2
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0x01  # somewhere in the tensors
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(ckpt)
    with pytest.warns(RuntimeWarning, match="checksum"):
        summary = run_experiment(cfg, store)
    assert summary.resumed_from is None
    whole = run_experiment(cfg, tmp_path / "whole.sqlite")
    assert summary.final_loss == whole.final_loss


def test_resume_under_another_backend_is_refused(tmp_path: Path, tiny_overrides: list[str]) -> None:
    loop = resolve_config(
        "mnist", overrides=[*tiny_overrides, "checkpoint_every=2", 'backend="loop"']
    )
    vmap = resolve_config(
        "mnist", overrides=[*tiny_overrides, "checkpoint_every=2", 'backend="vmap"']
    )
    assert loop.run_id() == vmap.run_id()  # the backend is not part of the id ...
    store = tmp_path / "s.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(loop, store, progress=_stop_at(3))
    with pytest.warns(RuntimeWarning, match="backend"):  # ... so the checkpoint must say it
        summary = run_experiment(vmap, store)
    assert summary.resumed_from is None
    same = run_experiment(vmap, tmp_path / "fresh.sqlite")
    assert summary.final_loss == same.final_loss


def test_two_stores_in_one_folder_keep_their_checkpoints(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, "checkpoint_every=2"])
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    assert checkpoint_path(a, cfg.run_id()) != checkpoint_path(b, cfg.run_id())
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, b, progress=_stop_at(3))
    run_experiment(cfg, a)  # finishing in a removes a's checkpoint only
    assert checkpoint_path(b, cfg.run_id()).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_experiment(cfg, b).resumed_from == 2


def test_checkpoint_round_trip_keeps_plain_data(tmp_path: Path) -> None:
    path = tmp_path / "x" / "c.pt"
    payload = {
        "format": 2,
        "run_id": "r",
        "round": 3,
        "sim": {"t": torch.arange(4.0), "rng": torch.get_rng_state()},
        "runner": {"acc": None, "loss": 0.5},
        "versions": {"torch": str(torch.__version__)},
        "execution": {"backend": "loop", "device": "cpu"},
    }
    save_checkpoint(path, payload)
    back = load_checkpoint(path)
    assert torch.equal(back["sim"]["t"], payload["sim"]["t"]) and back["round"] == 3
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]

"""Breast Cancer Wisconsin from scikit-learn: split, scaling, registry, CLI, preset run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from tesseract_fl.cli import main
from tesseract_fl.data import DATASETS, fetch_dataset, load_dataset, verify_dataset
from tesseract_fl.data.breast_cancer import stratified_split
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment


def test_load_shapes_split_and_scaling() -> None:
    assert "breast_cancer" in DATASETS
    ds = load_dataset("breast_cancer")
    assert ds.train_x.shape == (456, 30) and ds.test_x.shape == (113, 30)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.num_classes == 2 and set(ds.train_y.tolist()) == {0, 1}
    # standardized on the training rows only
    torch.testing.assert_close(ds.train_x.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    torch.testing.assert_close(ds.train_x.std(0, unbiased=False), torch.ones(30), atol=1e-4, rtol=0)
    # stratified: class ratio in test matches train closely (212 malignant / 357 benign)
    assert int((ds.test_y == 0).sum()) == 42 and int((ds.train_y == 0).sum()) == 170
    again = load_dataset("breast_cancer")
    assert torch.equal(again.train_x, ds.train_x)


def test_stratified_split_is_disjoint_and_seeded() -> None:
    y = np.array([0] * 10 + [1] * 30)
    tr, te = stratified_split(y, 0.2, seed=3)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 40
    assert (y[te] == 0).sum() == 2 and (y[te] == 1).sum() == 6
    _tr2, te2 = stratified_split(y, 0.2, seed=3)
    assert np.array_equal(te, te2)


def test_verify_fetch_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_dataset("breast_cancer", tmp_path) == {"breast_cancer": "ok"}
    fetch_dataset("breast_cancer", tmp_path, log=lambda _: None)
    assert main(["datasets", "verify", "breast_cancer", "--data-dir", str(tmp_path)]) == 0
    assert "breast_cancer" in capsys.readouterr().out


def test_preset_runs(tmp_path: Path) -> None:
    cfg = resolve_config("breast_cancer", overrides=["rounds=4", "eval_every=2"])
    assert cfg.model == "mlp" and cfg.clients == 10 and cfg.malicious == 3
    summary = run_experiment(cfg, tmp_path / "s.sqlite")
    assert 0.0 <= summary.final_accuracy <= 1.0

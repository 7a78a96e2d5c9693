"""Per-class test accuracy at every evaluation: stored beside the overall accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.simulation.engine import evaluate, evaluate_model


def test_evaluate_model_by_hand() -> None:
    # A "model" that always predicts class 1: class 1's accuracy is 1, the others' 0, and a
    # class without test samples is NaN.
    class Always1(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 4)
            out[:, 1] = 1.0
            return out

    x = torch.zeros(5, 2)
    y = torch.tensor([0, 1, 1, 2, 0])
    ev = evaluate_model(Always1(), x, y, num_classes=4, batch_size=2)
    assert ev.accuracy == 2 / 5
    assert ev.class_accuracy[:3] == (0.0, 1.0, 0.0) and math.isnan(ev.class_accuracy[3])
    assert evaluate(Always1(), x, y, batch_size=2) == (ev.accuracy, ev.loss)


def test_runs_store_class_accuracy(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, "attack=targeted_label_flip", "defense=fedsgd"]
    )
    store = tmp_path / "s.sqlite"
    summary = run_experiment(cfg, store)
    with ResultsStore(store) as s:
        by_round = s.class_accuracy(summary.run_id)
        metrics = {m["round"]: m for m in s.metrics(summary.run_id)}
    assert sorted(by_round) == [2, 5]  # eval_every = 3 over 6 rounds
    counts = torch.bincount(torch.as_tensor(_test_labels(cfg)), minlength=10).tolist()
    for rnd, accs in by_round.items():
        assert len(accs) == 10
        hits = sum(a * n for a, n in zip(accs, counts, strict=True) if a is not None)
        assert hits / sum(counts) == pytest.approx(metrics[rnd]["test_accuracy"])


def _test_labels(cfg):  # type: ignore[no-untyped-def]
    from tesseract_fl.data import load_dataset

    return load_dataset(cfg.dataset, cfg.data_dir).test_y

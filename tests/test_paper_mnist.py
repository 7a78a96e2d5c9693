"""Paper-scale checks on real MNIST (slow: about 7 minutes per run on 2 CPU cores).

Run with ``bash scripts/test.sh -m slow``. Skipped when MNIST is not in the data directory
(``tesseract-fl datasets fetch mnist``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tesseract_fl.data import verify_dataset
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment

pytestmark = pytest.mark.slow


def _have_mnist() -> bool:
    try:
        return all(v == "ok" for v in verify_dataset("mnist").values())
    except Exception:
        return False


@pytest.mark.skipif(not _have_mnist(), reason="real MNIST not fetched")
@pytest.mark.parametrize("defense", ["fedsgd", "tesseract"])
def test_mnist_300_rounds_reaches_87_percent(tmp_path: Path, defense: str) -> None:
    """Acceptance: paper settings (Table 1), no attack, 300 rounds -> >= 87% accuracy."""
    cfg = resolve_config("mnist", overrides=["rounds=300", f"defense={defense}", "eval_every=300"])
    summary = run_experiment(cfg, tmp_path / "store.sqlite")
    assert summary.final_accuracy >= 0.87, summary

"""Random configs run end to end: a run finishes (possibly as diverged) or fails with one of our
documented errors, never with a raw Python exception."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tesseract_fl.errors import TesseractFLError
from tesseract_fl.experiments.config import build_config
from tesseract_fl.experiments.runner import run_experiment

EXTREME_FLOATS = st.sampled_from([1e-300, 1e-8, 0.5, 1.0, 50.0, 1e6, 1e20, 1e300, math.inf])
ATTACKS: list[Any] = [
    "none",
    "full_trim",
    "full_krum",
    "alie",
    "ipm",
    "min_max",
    "min_sum",
    "label_flip",
    "targeted_label_flip",
    {"name": "gaussian", "sigma": 1e20},
    {"name": "sign_flip", "scale": 1e6},
    "adaptive_trim",
]
DEFENSES = [
    "fedsgd",
    "tesseract",
    "clip+tesseract",
    "trimmed_mean",
    "median",
    "krum",
    "bulyan",
    "faba",
    "foolsgold",
    "fltrust",
    "clip+foolsgold",
]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.fixed_dictionaries(
        {
            "defense": st.sampled_from(DEFENSES),
            "attack": st.sampled_from(ATTACKS),
            "model": st.sampled_from(["mnist_cnn", "mnist_cnn_padded", "mlp", "leaf_cnn"]),
            "lr": EXTREME_FLOATS,
            "batch_size": st.sampled_from([1, 7, 64, 1000, 65536]),
            "seed": st.sampled_from([0, 1, 2**63 - 1, 2**63, -1]),
            "partition": st.sampled_from(["bias", "iid", "dirichlet", "sequential"]),
            "bias": st.sampled_from([0.0, 0.5, 1.0]),
            "alpha": st.sampled_from([1e-3, 0.5, 1e3]),
            "backend": st.sampled_from(["loop", "threads", "vmap"]),
        }
    )
)
def test_random_configs_run_or_fail_cleanly(
    tmp_path: Path, tiny_data_dir: Path, data: dict[str, Any]
) -> None:
    raw = {
        "data_dir": str(tiny_data_dir),
        "clients": 10,
        "malicious": 2,
        "rounds": 2,
        "eval_every": 1,
        "checkpoint_every": 1,
        **data,
    }
    try:
        cfg = build_config(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = run_experiment(cfg, tmp_path / "s.sqlite", force=True)
    except TesseractFLError:
        return
    assert summary.rounds == 2
    acc = summary.final_accuracy
    assert acc is None or 0.0 <= acc <= 1.0

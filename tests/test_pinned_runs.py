"""Short runs' exact numbers, pinned: a refactor that keeps the numbers keeps these digests.

Each case runs a few rounds on the tiny IDX dataset and digests every number the store holds
for it (per-round metrics, per-client flip-scores, reputations and weights, the attack's
records, the final accuracy and loss) down to the last bit. ``tests/pinned_runs.json`` holds
the digests the code produced when they were pinned. When a change is *meant* to alter
numbers, bump the package version (stored results are keyed by it), or only the changed
built-in's ``revision`` when the change is confined to it (docs/design.md, "Fingerprints"), and
re-pin with ``TESSERACT_FL_REPIN=1 python -m pytest tests/test_pinned_runs.py``.

The digests are of one machine's floating-point results: another CPU (another SIMD kernel in
torch or NumPy) may round differently, so the file keeps one set of digests per machine it was
pinned on (pinned from the same code on each), and the test skips on a machine it does not
know. Re-pinning writes this machine's set and keeps the others'.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore

PIN_FILE = Path(__file__).with_name("pinned_runs.json")
DEFENSES = [
    "fedsgd",
    "tesseract",
    "trimmed_mean",
    "median",
    "krum",
    "bulyan",
    "faba",
    "foolsgold",
    "fltrust",
]
ATTACKS = [
    "full_krum",
    "full_trim",
    "adaptive_krum",
    "adaptive_trim",
    "alie",
    "gaussian",
    "ipm",
    "label_flip",
    "targeted_label_flip",
    "min_max",
    "min_sum",
    "sign_flip",
]


def _cases() -> dict[str, list[str]]:
    """Case name -> `--set` overrides on top of the tiny-run settings."""
    cases: dict[str, list[str]] = {}
    for d in DEFENSES:
        cases[f"{d}-none"] = [f"defense={d}", "attack=none"]
    for a in ATTACKS:
        cases[f"tesseract-{a}"] = ["defense=tesseract", f"attack={a}"]
    cases["krum-full_krum"] = ["defense=krum", "attack=full_krum"]
    cases["trimmed_mean-full_trim"] = ["defense=trimmed_mean", "attack=full_trim"]
    cases["median-full_trim"] = ["defense=median", "attack=full_trim"]
    cases["fedsgd-full_trim"] = ["defense=fedsgd", "attack=full_trim"]
    cases["faba-full_krum"] = ["defense=faba", "attack=full_krum"]
    cases["foolsgold-full_krum"] = ["defense=foolsgold", "attack=full_krum"]
    cases["fltrust-full_trim"] = ["defense=fltrust", "attack=full_trim"]
    cases["bulyan-full_krum"] = ["defense=bulyan", "attack=full_krum"]
    cases["tesseract-full_trim-benign-only"] = [
        "defense=tesseract",
        "attack=full_trim",
        'aggregate_only="benign"',
    ]
    cases["tesseract-full_trim-loop"] = ["defense=tesseract", "attack=full_trim", 'backend="loop"']
    cases["tesseract-full_trim-vmap"] = ["defense=tesseract", "attack=full_trim", 'backend="vmap"']
    cases["tesseract-padded-iid"] = [
        'model="mnist_cnn_padded"',
        'partition="iid"',
        "defense=tesseract",
    ]
    return cases


CASES = _cases()


def _digest(store: Path, run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    with ResultsStore(store) as s:
        payload = {
            "metrics": s.metrics(run_id),
            "clients": s.client_records(run_id),
            "attack": s.attack_records(run_id),
        }
    blob = json.dumps(payload, sort_keys=True, default=repr, allow_nan=True)
    return {
        "final_accuracy": summary.final_accuracy,
        "final_loss": summary.final_loss,
        "sha256": hashlib.sha256(blob.encode()).hexdigest(),
    }


def _machine() -> str:
    """What the pinned numbers hold for: float results depend on the CPU's kernels and the
    numerical libraries, so on another machine the test is skipped (re-pin there)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{platform.machine()} {cpu} torch {torch.__version__} numpy {np.__version__} "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )


def _run_case(tmp_path: Path, tiny_overrides: list[str], case: str) -> dict[str, Any]:
    cfg = resolve_config(
        "mnist",
        overrides=[*tiny_overrides, "rounds=4", "eval_every=2", "record_every=1", *CASES[case]],
    )
    store = tmp_path / "s.sqlite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Bulyan warns at m=10, c=2 (m < 4c+3)
        summary = run_experiment(cfg, store)
    return _digest(store, summary.run_id, summary)


def test_every_case_is_pinned() -> None:
    """The pin file covers exactly the cases above (a new case needs a re-pin)."""
    if os.environ.get("TESSERACT_FL_REPIN"):
        pytest.skip("re-pinning")
    for machine, pinned in json.loads(PIN_FILE.read_text())["machines"].items():
        assert sorted(pinned["cases"]) == sorted(CASES), machine


@pytest.mark.parametrize("case", sorted(CASES))
def test_pinned_numbers(tmp_path: Path, tiny_overrides: list[str], case: str) -> None:
    got = _run_case(tmp_path, tiny_overrides, case)
    if os.environ.get("TESSERACT_FL_REPIN"):
        data = json.loads(PIN_FILE.read_text()) if PIN_FILE.exists() else {"machines": {}}
        data["machines"].setdefault(_machine(), {"cases": {}})["cases"][case] = got
        PIN_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        return
    machines = json.loads(PIN_FILE.read_text())["machines"]
    if _machine() not in machines:
        pytest.skip(f"pinned on {sorted(machines)}, not on this machine ({_machine()})")
    assert got == machines[_machine()]["cases"][case], f"numbers of case {case!r} changed"

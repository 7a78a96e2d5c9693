"""The CUDA path against the CPU path: gradients, every defense, and every pinned short run.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. Float32 on a GPU reduces in another order than on a
CPU (and cuDNN may use TF32 for convolutions), so results agree to a tolerance, not to the bit;
discrete choices (Krum's pick, TESSERACT's penalized set) are compared exactly where the inputs
leave no near-tie. With ``TESSERACT_FL_CUDA_REPORT=path.json`` the run-level differences are
also written out, for the record of a GPU session.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tesseract_fl.aggregators import AGGREGATORS, AggregationContext, make_aggregator
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.models import make_model
from tesseract_fl.simulation.gradients import client_gradients
from test_pinned_runs import CASES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: Relative error allowed between a CUDA and a CPU float32 result (norm of the difference over
#: the norm of the CPU result): reduction order, and TF32 convolutions in cuDNN's default.
GRADIENT_RTOL = 5e-3
AGGREGATE_RTOL = 1e-4
#: A short run's final test loss may drift by this much (relative) between the devices.
RUN_RTOL = 2e-2

_REPORT: dict[str, Any] = {}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("backend", ["loop", "threads", "vmap"])
def test_gradients_on_cuda_match_cpu(backend: str) -> None:
    torch.manual_seed(0)
    model = make_model("mnist_cnn")
    x = torch.randn(6, 8, 1, 28, 28)
    y = torch.randint(0, 10, (6, 8))
    G_cpu = client_gradients(model, x, y, F.cross_entropy, "loop")[0]
    G_gpu = client_gradients(
        model.cuda(), x.cuda(), y.cuda(), F.cross_entropy, backend, chunk_size=4
    )[0]
    assert G_gpu.device.type == "cuda"
    assert _rel(G_gpu, G_cpu) < GRADIENT_RTOL


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_defense_on_cuda_matches_cpu(name: str) -> None:
    """Two rounds (the second with TESSERACT's reference sign and FoolsGold's history) on well
    separated rows: the same update within float32 reduction error, the same weights."""
    gen = torch.Generator().manual_seed(1)
    m, P = 10, 3000
    rounds = [torch.randn(m, P, generator=gen) + torch.linspace(0, 3, m)[:, None] for _ in "ab"]
    root = torch.randn(P, generator=gen)
    n_samples = torch.full((m,), 60.0)
    out: dict[str, Any] = {}
    for device in ("cpu", "cuda"):
        agg = make_aggregator(name, num_clients=m, c_max=2)
        for G in rounds:
            ctx = AggregationContext(
                n_samples=n_samples.to(device),
                root_gradient=root.to(device) if agg.needs_root_gradient else None,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Bulyan at m < 4c + 3
                res = agg.aggregate(G.to(device), torch.arange(m), ctx)
        out[device] = res
    assert out["cuda"].update.device.type == "cuda"
    assert _rel(out["cuda"].update, out["cpu"].update) < AGGREGATE_RTOL
    assert torch.allclose(
        out["cuda"].weights.cpu().double(), out["cpu"].weights.double(), atol=1e-5
    )


@pytest.fixture(scope="module")
def cuda_report() -> Any:
    yield _REPORT
    path = os.environ.get("TESSERACT_FL_CUDA_REPORT")
    if path:
        Path(path).write_text(json.dumps(_REPORT, indent=1, sort_keys=True) + "\n")


def _short_run(tmp_path: Path, overrides: list[str], device: str) -> tuple[Any, list[Any]]:
    cfg = resolve_config(
        "mnist",
        overrides=[*overrides, "rounds=4", "eval_every=2", "record_every=1", f'device="{device}"'],
    )
    store = tmp_path / f"{device}.sqlite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = run_experiment(cfg, store)
    with ResultsStore(store) as s:
        metrics = s.metrics(summary.run_id)
    return summary, metrics


@pytest.mark.parametrize("case", sorted(CASES))
def test_pinned_short_runs_on_cuda_track_cpu(
    tmp_path: Path, tiny_overrides: list[str], case: str, cuda_report: dict[str, Any]
) -> None:
    """Every pinned short run (each defense, each attack) completes on CUDA with finite numbers,
    records as many rounds as on the CPU, and ends near the CPU run's test loss."""
    cpu, cpu_metrics = _short_run(tmp_path, [*tiny_overrides, *CASES[case]], "cpu")
    gpu, gpu_metrics = _short_run(tmp_path, [*tiny_overrides, *CASES[case]], "cuda")
    cuda_report[case] = {
        "cpu_loss": cpu.final_loss,
        "cuda_loss": gpu.final_loss,
        "cpu_accuracy": cpu.final_accuracy,
        "cuda_accuracy": gpu.final_accuracy,
    }
    assert len(gpu_metrics) == len(cpu_metrics)
    assert math.isfinite(gpu.final_loss) and math.isfinite(gpu.final_accuracy)
    assert abs(gpu.final_loss - cpu.final_loss) <= RUN_RTOL * abs(cpu.final_loss) + 1e-4

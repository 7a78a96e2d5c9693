"""The benchmark entry point and the engine benchmark run end to end on tiny sizes (timings
themselves are not asserted: performance is measured by the benchmarks, not by tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import BENCHMARKS
from benchmarks.__main__ import main as bench_main
from benchmarks._timing import timeit, write_report


def test_every_listed_benchmark_is_a_module_with_main() -> None:
    import importlib

    for name in BENCHMARKS:
        mod = importlib.import_module(f"benchmarks.{name}")
        assert callable(mod.main), name


def test_unknown_benchmark_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_main(["nope"])
    assert exc.value.code == 2
    assert "unknown benchmark(s) nope" in capsys.readouterr().err


def test_engine_benchmark_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    rc = bench_main(
        ["engine", "--clients", "2,3", "--repeats", "1", "--batch", "2", "--out", str(out)]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["clients"] for r in report["backends"]] == [2, 3]
    for r in report["backends"]:
        for backend in ("loop", "threads", "vmap"):
            assert r[backend]["min_ms"] > 0
            assert r[backend]["ms_per_client"] == pytest.approx(r[backend]["min_ms"] / r["clients"])
    # Chunks larger than the client count collapse to the client count.
    assert set(report["vmap_chunks"]["timings"]) == {"3"}
    assert report["torch_threads"] >= 1 and report["torch"]


def test_timeit_counts_calls_and_write_report_is_atomic(tmp_path: Path) -> None:
    calls = []
    t = timeit(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t["repeats"] == 3
    assert t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    path = write_report({"a": 1}, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == {"a": 1}
    assert not list(path.parent.glob("*.tmp"))


def test_round_ratio_is_measured_inside_each_round() -> None:
    """``time_rounds`` divides each step's time by the gradient time of that same step and puts
    the simulation's own method back afterwards."""
    import time

    from benchmarks.overhead import time_rounds

    class FakeSim:
        def __init__(self) -> None:
            self.calls = 0
            self.device = torch.device("cpu")

        def compute_gradients(self) -> int:
            self.calls += 1
            time.sleep(0.02)
            return self.calls

        def step(self) -> None:
            self.compute_gradients()
            time.sleep(0.02)

    sim = FakeSim()
    out = time_rounds(sim, 3)
    assert sim.calls == 3 and out["repeats"] == 3 and len(out["ratios_per_round"]) == 3
    assert 1.5 < out["ratio_to_gradients"] < 3.0
    assert "compute_gradients" not in vars(sim)


def test_attacks_benchmark_checks_its_kernels_bit_for_bit(tmp_path: Path) -> None:
    out = tmp_path / "attacks.json"
    args = ["attacks", "--quick", "--m", "12", "--P", "20000", "--c", "3", "--out", str(out)]
    assert bench_main(args) == 0
    report = json.loads(out.read_text())
    assert {"alie", "full_trim", "min_max"} <= set(report["attacks"])
    kernels = report["kernels"]
    assert len(kernels) == 2
    for k in kernels.values():
        assert k["same_bits"] is True and k["ours"]["min_ms"] > 0 and k["speedup"] > 0

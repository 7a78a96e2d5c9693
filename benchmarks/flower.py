"""Flower simulation engine vs our in-process simulator: seconds per FedSGD round, same settings.

Both run the example app's experiment with 10 clients on the MNIST DNN (batch 32, TESSERACT with
c_max = 2, no attack): ours as ``FedSGDSimulation.step()`` in this process; Flower as
``flwr run examples/flower`` against a local SuperLink in simulation mode (Ray backend, 10
virtual SuperNodes, ``--client-cpus`` CPUs per ClientApp actor), where a round is measured by
the strategy from ``configure_train`` to the end of ``aggregate_train`` (sending the model,
every client's gradient, aggregation and the SGD step; server-side evaluation excluded, as it is
from ours). Flower's first round includes starting the Ray actors and is reported apart.

Uses real MNIST when it is in the data directory, else random MNIST-shaped images written as
IDX files (compute cost does not depend on pixel values; the JSON says which).

    .venv/bin/python -m benchmarks flower [--rounds 10] [--client-cpus 1] [--quick]
        [--out results/benchmarks/flower.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, write_report
from tesseract_fl.data import write_idx
from tesseract_fl.errors import DatasetError
from tesseract_fl.experiments.config import build_config
from tesseract_fl.experiments.runner import build_simulation

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"

SETTINGS: dict[str, Any] = {
    "dataset": "mnist",
    "model": "mnist_cnn",
    "clients": 10,
    "malicious": 0,
    "c_max": 2,
    "batch_size": 32,
    "lr": 0.01,
    "defense": "tesseract",
    "attack": "none",
}


def synthetic_mnist(root: Path, n_train: int = 6000, n_test: int = 1000) -> Path:
    """Random MNIST-shaped IDX files under ``root/mnist`` (used only without real MNIST)."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{name}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        write_idx(folder / f"{name}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return root


def ours(settings: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Seconds per round of the in-process simulator (median of ``rounds`` after one warm-up)."""
    sim = build_simulation(build_config({**settings, "rounds": rounds + 1}))
    sim.step()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        sim.step()
        times.append(time.perf_counter() - t)
    return {
        "seconds_per_round": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "rounds": rounds,
        "backend": sim.backend,
    }


def flower(
    settings: dict[str, Any], rounds: int, client_cpus: int, workdir: Path
) -> dict[str, Any]:
    """Seconds per round of the Flower simulation engine (Ray), as the strategy measures them."""
    from tesseract_fl.flower.localhost import LocalFederation

    results = workdir / "results"
    run_config = {k: v for k, v in settings.items() if v is not None}
    run_config.update(
        {"rounds": rounds, "eval_every": rounds, "test-samples": 1000, "results-dir": str(results)}
    )
    fed = LocalFederation(workdir / "federation", simulation=True)
    t0 = time.perf_counter()
    try:
        fed.start()
        fed.run(
            EXAMPLE,
            run_config,
            federation_config={
                "num-supernodes": settings["clients"],
                "client-resources-num-cpus": client_cpus,
            },
            timeout=600,
        )
        wall = time.perf_counter() - t0
    finally:
        fed.stop()
    (summary_file,) = results.glob("flower-*.json")
    history = json.loads(summary_file.read_text())["history"]
    per_round = [h["seconds"] for h in history]
    steady = per_round[1:] or per_round
    return {
        "seconds_per_round": statistics.median(steady),
        "min": min(steady),
        "max": max(steady),
        "first_round": per_round[0],
        "rounds": len(per_round),
        "wall_seconds_incl_startup": wall,
        "client_cpus": client_cpus,
        "backend": "ray",
        "leftover_processes": len(fed.survivors()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds per engine")
    ap.add_argument("--client-cpus", type=int, default=1, help="CPUs per Ray ClientApp actor")
    ap.add_argument("--data-dir", default=None, help="data directory (default: the usual one)")
    ap.add_argument("--quick", action="store_true", help="4 timed rounds")
    ap.add_argument("--out", default="results/benchmarks/flower.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 4)

    import flwr
    import ray

    from tesseract_fl.data import load_dataset

    settings = dict(SETTINGS, data_dir=args.data_dir)
    with tempfile.TemporaryDirectory(prefix="tesseract-fl-flower-bench-") as tmp:
        try:
            load_dataset("mnist", args.data_dir)
            data = "real MNIST"
        except DatasetError:
            settings["data_dir"] = str(synthetic_mnist(Path(tmp) / "data"))
            data = "random MNIST-shaped images (MNIST not found; tesseract-fl datasets fetch mnist)"
        res = {
            "ours": ours(settings, args.rounds),
            "flower_simulation": flower(settings, args.rounds + 1, args.client_cpus, Path(tmp)),
        }
    ratio = res["flower_simulation"]["seconds_per_round"] / res["ours"]["seconds_per_round"]
    console = Console()
    console.print(f"data: {data}; 10 clients, MNIST DNN, batch 32, TESSERACT (c_max=2), no attack")
    table = Table(title="seconds per FedSGD round, same settings", title_justify="left")
    for col in ("engine", "s/round", "min", "max"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    labels = {
        "ours": f"ours (in-process, {res['ours']['backend']} backend)",
        "flower_simulation": f"Flower simulation (Ray, {args.client_cpus} CPU/actor)",
    }
    for key, label in labels.items():
        t = res[key]
        table.add_row(label, f"{t['seconds_per_round']:.3f}", f"{t['min']:.3f}", f"{t['max']:.3f}")
    console.print(table)
    fl = res["flower_simulation"]
    console.print(
        f"Flower's first round (Ray actors start) {fl['first_round']:.1f} s; the whole `flwr run` "
        f"incl. SuperLink and Ray start-up {fl['wall_seconds_incl_startup']:.1f} s; "
        f"ratio Flower / ours: {ratio:.1f}x"
    )
    report = {
        "benchmark": "flower",
        **machine_info(),
        "settings": {k: v for k, v in settings.items() if k != "data_dir"},
        "data": data,
        "timings": res,
        "ratios": {"flower_over_ours": ratio},
        "flwr": flwr.__version__,
        "ray": ray.__version__,
    }
    console.print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()

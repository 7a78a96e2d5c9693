"""The FedAvg example on Flower's simulation engine vs our simulator with ``local_steps``:
seconds per round at the same settings.

Both run the FedAvg example's experiment (``examples/flower-fedavg``: 10 clients, MNIST DNN,
batch 32, lr 0.01, TESSERACT with c_max = 2, no attack) with local training: Flower's app trains
``--local-epochs`` epochs over each client's partition and sends weights (``reply="weights"``);
ours trains ``local_steps = round(epochs * mean partition size / batch)`` steps per client (the
same number of local SGD steps on average, round-robin batches instead of epochs) and sends
pseudo-gradients. A Flower round is the strategy's mean over its rounds (its first round starts
the Ray actors and is included, as the app reports it); ours is the median of ``--rounds``
``step()`` calls after none.

    .venv/bin/python -m benchmarks flower_fedavg [--rounds 3] [--local-epochs 2] [--client-cpus 1]
        [--out results/benchmarks/flower_fedavg.json]
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

from rich.console import Console

from benchmarks._timing import machine_info, write_report
from tesseract_fl.experiments.config import build_config
from tesseract_fl.experiments.runner import build_simulation

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "flower-fedavg"

SETTINGS: dict[str, Any] = {
    "dataset": "mnist",
    "model": "mnist_cnn",
    "partition": "bias",
    "bias": 0.5,
    "clients": 10,
    "malicious": 2,
    "batch_size": 32,
    "lr": 0.01,
    "defense": "tesseract",
    "attack": "none",
}


def ours(rounds: int, epochs: int) -> dict[str, Any]:
    """Seconds per round of our simulator with the matching ``local_steps``."""
    probe = build_simulation(build_config(dict(SETTINGS, rounds=1)))
    mean_n = float(probe.n_samples.mean())
    steps = max(1, round(epochs * mean_n / SETTINGS["batch_size"]))
    sim = build_simulation(build_config(dict(SETTINGS, rounds=rounds, local_steps=steps)))
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
        "local_steps": steps,
        "mean_partition": mean_n,
    }


def flower(rounds: int, epochs: int, client_cpus: int, workdir: Path) -> dict[str, Any]:
    """Seconds per round of the FedAvg example app on the Flower simulation engine."""
    from tesseract_fl.flower.localhost import LocalFederation

    results = workdir / "results"
    run_config = {
        "rounds": rounds,
        "local-epochs": epochs,
        "attack": "none",
        "eval_every": rounds,
        "test-samples": 1000,
        "results-dir": str(results),
    }
    fed = LocalFederation(workdir / "federation", simulation=True)
    t0 = time.perf_counter()
    try:
        fed.start()
        fed.run(
            APP,
            run_config,
            federation_config={"num-supernodes": 10, "client-resources-num-cpus": client_cpus},
            timeout=1800,
        )
        wall = time.perf_counter() - t0
    finally:
        fed.stop()
    (summary_file,) = results.glob("flower-fedavg-*.json")
    summary = json.loads(summary_file.read_text())
    return {
        "seconds_per_round": summary["seconds_per_round"],
        "rounds": summary["rounds"],
        "seconds_in_strategy": summary["seconds"],
        "wall_seconds_incl_startup": wall,
        "client_cpus": client_cpus,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds per engine")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--client-cpus", type=int, default=1, help="CPUs per Ray ClientApp actor")
    ap.add_argument("--out", default="results/benchmarks/flower_fedavg.json")
    args = ap.parse_args(argv)
    import flwr

    with tempfile.TemporaryDirectory(prefix="tesseract-fl-fedavg-bench-") as tmp:
        res = {
            "ours": ours(args.rounds, args.local_epochs),
            "flower_simulation": flower(
                args.rounds, args.local_epochs, args.client_cpus, Path(tmp)
            ),
        }
    ratio = res["flower_simulation"]["seconds_per_round"] / res["ours"]["seconds_per_round"]
    console = Console()
    o, f = res["ours"], res["flower_simulation"]
    console.print(
        f"FedAvg, 10 clients, MNIST DNN, {args.local_epochs} local epochs: Flower simulation "
        f"{f['seconds_per_round']:.1f} s/round (mean of {f['rounds']}, first round included); "
        f"ours {o['seconds_per_round']:.1f} s/round (median of {o['rounds']}, local_steps = "
        f"{o['local_steps']}); Flower / ours {ratio:.2f}x"
    )
    report = {
        "benchmark": "flower_fedavg",
        **machine_info(),
        "settings": {**SETTINGS, "local_epochs": args.local_epochs},
        "timings": res,
        "ratios": {"flower_over_ours": ratio},
        "flwr": flwr.__version__,
    }
    console.print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()

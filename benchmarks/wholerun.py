"""Whole runs: seconds per round of a ``mnist`` TESSERACT + Full-Trim run through the runner
(store writes, records, checkpoints and evaluation included), and the projected time of the
paper's Table 2 MNIST column (the 19 runs of the packaged grid ``table2-mnist``).

The run part executes ``--rounds`` rounds (default 50; ``--rounds 500`` for the whole run) into
a temporary store and projects to the preset's 500 rounds. The projection times each of the
grid's runs for a few rounds (``FedSGDSimulation.step`` after a warm-up round) plus one
evaluation amortized over ``eval_every``, and multiplies by its rounds. Where the results store
already holds finished runs of the grid, their recorded wall times are listed beside.

    .venv/bin/python -m benchmarks wholerun [--rounds 50] [--grid table2-mnist]
        [--store results/store.sqlite] [--quick] [--out results/benchmarks/wholerun.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, timeit, write_report
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.grid import load_grid
from tesseract_fl.experiments.runner import build_simulation, run_experiment


def measured_run(rounds: int) -> dict[str, Any]:
    """Run the mnist preset with Full-Trim for ``rounds`` rounds into a temporary store."""
    cfg = resolve_config("mnist", overrides=["attack=full_trim", f"rounds={rounds}"])
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = run_experiment(cfg, Path(tmp) / "store.sqlite")
        seconds = time.perf_counter() - t
    full = resolve_config("mnist").rounds
    return {
        "rounds": rounds,
        "seconds": seconds,
        "seconds_per_round": seconds / rounds,
        "projected_full_run_s": seconds / rounds * full,
        "full_rounds": full,
        "final_accuracy": summary.final_accuracy,
        "backend": summary.backend,
    }


def stored_wall_times(store: Path, run_ids: set[str]) -> dict[str, float]:
    """Recorded wall seconds of the finished runs among ``run_ids`` (empty if no store)."""
    if not store.exists():
        return {}
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT run_id, summary FROM runs WHERE status = 'finished'").fetchall()
    finally:
        con.close()
    out = {}
    for run_id, summary in rows:
        if run_id in run_ids and summary:
            seconds = json.loads(summary).get("seconds")
            if seconds is not None:
                out[run_id] = float(seconds)
    return out


def project_grid(grid_path: str, repeats: int) -> dict[str, Any]:
    """Projected seconds of every run of the grid from a few timed rounds each."""
    grid = load_grid(grid_path)
    runs = []
    for spec in grid.runs:
        cfg = spec.config
        sim = build_simulation(cfg)
        sim.step()
        step = timeit(sim.step, repeats, warmup=0)
        ev = timeit(sim.evaluate, 1, warmup=0)
        per_round = step["min_ms"] / 1000 + ev["min_ms"] / 1000 / cfg.eval_every
        runs.append(
            {
                "run_id": spec.run_id,
                "labels": spec.labels,
                "defense": cfg.defense,
                "attack": cfg.attack,
                "rounds": cfg.rounds,
                "step_ms": step["min_ms"],
                "evaluate_ms": ev["min_ms"],
                "seconds_per_round": per_round,
                "projected_s": per_round * cfg.rounds,
            }
        )
    return {"grid": grid_path, "name": grid.name, "runs": runs}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--grid", default="table2-mnist")
    ap.add_argument("--store", default="results/store.sqlite")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10 rounds, 1 repeat per grid run")
    ap.add_argument("--out", default="results/benchmarks/wholerun.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = min(args.rounds, 10), 1
    console = Console()
    run = measured_run(args.rounds)
    console.print(
        f"mnist TESSERACT + Full-Trim, {run['rounds']} rounds through the runner: "
        f"{run['seconds_per_round']:.2f} s/round ({run['backend']} backend); projected "
        f"{run['full_rounds']}-round run {run['projected_full_run_s'] / 60:.1f} min"
    )
    proj = project_grid(args.grid, args.repeats)
    stored = stored_wall_times(Path(args.store), {r["run_id"] for r in proj["runs"]})
    total = sum(r["projected_s"] for r in proj["runs"])
    table = Table(
        title=f"{proj['name']}: {len(proj['runs'])} runs, projected {total / 3600:.2f} h "
        f"on this machine ({machine_info()['torch_threads']} threads)",
        title_justify="left",
    )
    for col in ("attack", "defense", "rounds", "s/round", "projected min", "stored min"):
        table.add_column(col, justify="left" if col in ("attack", "defense") else "right")
    for r in proj["runs"]:
        r["stored_s"] = stored.get(r["run_id"])
        table.add_row(
            r["attack"],
            r["defense"],
            str(r["rounds"]),
            f"{r['seconds_per_round']:.2f}",
            f"{r['projected_s'] / 60:.1f}",
            "" if r["stored_s"] is None else f"{r['stored_s'] / 60:.1f}",
        )
    console.print(table)
    report = {
        "benchmark": "wholerun",
        **machine_info(),
        "run": run,
        "projection": proj,
        "projected_total_s": total,
        "projected_total_h": total / 3600,
    }
    console.print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()

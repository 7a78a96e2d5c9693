"""Peak resident memory of a round at 100 and 1000 clients (MNIST DNN, TESSERACT + Full-Trim).

Each size runs in a fresh child process (so one measurement cannot inherit another's peak):
the child builds the ``mnist`` preset's simulation with ``clients = m`` and 20% attackers, runs
two rounds, and reports its peak resident set size (``VmHWM``) and its resident size just
before the first round. The ``[m, P]`` gradient matrix alone is ``4 m P`` bytes (1 GiB at
1000 x 266,060); the target is a peak below 4 GiB at 1000 clients.

    .venv/bin/python -m benchmarks memory [--clients 100,1000] [--defense tesseract]
        [--attack full_trim] [--out results/benchmarks/memory.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, write_report

TARGET_GIB_AT_1000 = 4.0
GIB = 1024**3


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` in bytes (Linux; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _peak_bytes() -> int:
    """Peak resident set size of this process image.

    ``VmHWM`` belongs to the address space made at ``exec``; ``ru_maxrss`` is not used because
    Linux carries it over from the parent across fork + exec (a child started by a large
    benchmark process would report the parent's size).
    """
    hwm = _status_bytes("VmHWM")
    return hwm if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(m: int, defense: str, attack: str, rounds: int) -> dict[str, Any]:
    """Build the simulation at ``m`` clients, run ``rounds`` rounds, report memory (in bytes)."""
    import time

    from tesseract_fl.experiments.config import resolve_config
    from tesseract_fl.experiments.runner import build_simulation

    cfg = resolve_config(
        "mnist",
        overrides=[
            f"clients={m}",
            f"malicious={m // 5}",
            f"defense={defense}",
            f"attack={attack}",
        ],
    )
    sim = build_simulation(cfg)
    before = _status_bytes("VmRSS")
    t = time.perf_counter()
    for _ in range(rounds):
        sim.step()
    seconds = (time.perf_counter() - t) / rounds
    peak = _peak_bytes()
    return {
        "clients": m,
        "malicious": m // 5,
        "params": sim.num_params,
        "matrix_bytes": 4 * m * sim.num_params,
        "rss_before_round_bytes": before,
        "peak_rss_bytes": peak,
        "seconds_per_round": seconds,
        "backend": sim.backend,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--clients", default="100,1000")
    ap.add_argument("--defense", default="tesseract")
    ap.add_argument("--attack", default="full_trim")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round per size")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="results/benchmarks/memory.json")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    if args.child is not None:
        print(json.dumps(child(args.child, args.defense, args.attack, rounds)))
        return {}
    console = Console()
    sizes = [int(v) for v in args.clients.split(",") if v.strip()]
    rows = []
    for m in sizes:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--child",
            str(m),
            "--defense",
            args.defense,
            "--attack",
            args.attack,
            "--rounds",
            str(rounds),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child for {m} clients failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["peak_gib"] = r["peak_rss_bytes"] / GIB
        r["peak_over_matrix"] = r["peak_rss_bytes"] / r["matrix_bytes"]
        if m == 1000:
            r["target_gib"] = TARGET_GIB_AT_1000
            r["meets_target"] = r["peak_gib"] < TARGET_GIB_AT_1000
        rows.append(r)
    report = {
        "benchmark": "memory",
        "defense": args.defense,
        "attack": args.attack,
        "rounds": rounds,
        **machine_info(),
        "sizes": rows,
    }
    table = Table(
        title=f"peak memory of a round: mnist preset, {args.defense} + {args.attack}",
        title_justify="left",
    )
    for col in ("clients", "[m, P] GiB", "RSS before GiB", "peak GiB", "peak / matrix", "s/round"):
        table.add_column(col, justify="right")
    table.add_column("target")
    for r in rows:
        table.add_row(
            str(r["clients"]),
            f"{r['matrix_bytes'] / GIB:.2f}",
            f"{r['rss_before_round_bytes'] / GIB:.2f}",
            f"{r['peak_gib']:.2f}",
            f"{r['peak_over_matrix']:.2f}",
            f"{r['seconds_per_round']:.2f}",
            ("< 4 GiB: " + ("yes" if r["meets_target"] else "NO")) if "target_gib" in r else "",
        )
    console.print(table)
    console.print(f"wrote {write_report(report, args.out)}")
    return report


if __name__ == "__main__":
    main()

"""torch.compile: does compiling the client model pay for the gradient computation on this machine?

The unit of work of the CPU gradient engine (the ``threads`` backend) is one client's forward and
backward pass on its batch, run single-threaded in a worker thread. This benchmark times that unit
eagerly and with ``torch.compile`` (inductor) for a preset's model and batch, reports the compile
time separately (the first compiled call minus an eager call), and the number of rounds a run
needs before the compile time is paid back. The simulator does not compile unless this says it
pays; when the compiler fails (no C++ toolchain, unsupported op) the failure is reported.

    .venv/bin/python -m benchmarks compile [--preset mnist] [--clients 20] [--repeats 3] [--quick]
        [--out results/benchmarks/compile.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from benchmarks._timing import machine_info, timeit, write_report
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.models import count_parameters, make_model


def client_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One client's forward and backward on its batch (gradients left in ``.grad``)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--preset", default="mnist")
    ap.add_argument("--clients", type=int, default=20, help="client batches per timed pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repeat, 5 clients")
    ap.add_argument("--out", default="results/benchmarks/compile.json")
    args = ap.parse_args(argv)
    reps = 1 if args.quick else args.repeats
    n = 5 if args.quick else args.clients
    cfg = resolve_config(args.preset)
    if cfg.dataset not in ("mnist", "fmnist"):
        raise SystemExit(f"compile benchmark supports the image presets; got {cfg.dataset}")
    console = Console()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a threads-backend worker
    try:
        torch.manual_seed(0)
        model = make_model(cfg.model)
        x = torch.randn(n, cfg.batch_size, 1, 28, 28)
        y = torch.randint(0, 10, (n, cfg.batch_size))

        def eager() -> None:
            for i in range(n):
                client_pass(model, x[i], y[i])

        eager_t = timeit(eager, reps)
        compiled_model = torch.compile(model)
        report: dict[str, Any] = {
            "benchmark": "compile",
            "preset": args.preset,
            "model": cfg.model,
            "params": count_parameters(model),
            "batch_size": cfg.batch_size,
            "clients_per_pass": n,
            "worker_threads": 1,
            **machine_info(),
            "eager": eager_t,
            "eager_per_client_ms": eager_t["min_ms"] / n,
        }
        t0 = time.perf_counter()
        try:
            client_pass(compiled_model, x[0], y[0])
        except Exception as exc:  # the compiler's own failure is the result here
            report["compiled"] = None
            report["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            console.print(f"[red]torch.compile failed:[/] {report['error']}")
            write_report(report, args.out)
            return report
        first_s = time.perf_counter() - t0

        def compiled() -> None:
            for i in range(n):
                client_pass(compiled_model, x[i], y[i])

        comp_t = timeit(compiled, reps)
    finally:
        torch.set_num_threads(threads)
    per_client_eager = eager_t["min_ms"] / n
    per_client_comp = comp_t["min_ms"] / n
    compile_s = max(0.0, first_s - per_client_eager / 1000)
    saving_per_round_s = (per_client_eager - per_client_comp) * cfg.clients / 1000
    report.update(
        compiled=comp_t,
        compiled_per_client_ms=per_client_comp,
        speedup=per_client_eager / per_client_comp,
        compile_s=compile_s,
        saving_per_round_s=saving_per_round_s,
        break_even_rounds=(compile_s / saving_per_round_s) if saving_per_round_s > 0 else None,
        pays_within_run=saving_per_round_s > 0 and compile_s / saving_per_round_s < cfg.rounds,
        rounds=cfg.rounds,
        clients=cfg.clients,
    )
    table = Table(
        title=f"{args.preset} ({cfg.model}, batch {cfg.batch_size}): one client's forward + "
        "backward, 1 thread",
        title_justify="left",
    )
    for col in ("form", "ms per client", "speed-up", "compile s"):
        table.add_column(col, justify="left" if col == "form" else "right")
    table.add_row("eager", f"{per_client_eager:.2f}", "1.00", "")
    table.add_row(
        "torch.compile", f"{per_client_comp:.2f}", f"{report['speedup']:.2f}", f"{compile_s:.1f}"
    )
    console.print(table)
    be = report["break_even_rounds"]
    console.print(
        f"saving per {cfg.clients}-client round {saving_per_round_s * 1000:+.0f} ms; "
        + (f"compile time paid back after {be:.0f} rounds" if be else "never pays back")
        + f" (run: {cfg.rounds} rounds)"
    )
    path = write_report(report, args.out)
    console.print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()

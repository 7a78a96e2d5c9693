"""Gradient engine: seconds per round of every backend at 10, 100 and 1000 clients, and the best
vmap chunk size.

One round's unavoidable work is each client's forward and backward pass on its batch
(docs/design.md, "Performance"). This times that alone, for the per-client loop, the threaded
loop and chunked vmap, on random MNIST-shaped batches (the cost does not depend on pixel
values), and reports the cost per client so that the scaling shows. At 100 clients it also
sweeps the vmap chunk size.

    .venv/bin/python -m benchmarks engine [--clients 10,100,1000] [--model mnist_cnn]
        [--device cpu|cuda] [--repeats 3] [--quick] [--out results/benchmarks/engine.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from benchmarks._timing import device_sync, machine_info, timeit, write_report
from tesseract_fl.models import make_model
from tesseract_fl.simulation.gradients import (
    BACKENDS,
    client_gradients,
    default_backend,
    default_vmap_chunk,
)

CHUNKS: tuple[int, ...] = (5, 10, 25, 50, 100)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def bench_backends(
    model_name: str, m: int, batch: int, device: str, repeats: int, chunk: int
) -> dict[str, Any]:
    """Seconds per round and per client of every backend at ``m`` clients."""
    gen = torch.Generator().manual_seed(m)
    model = make_model(model_name).to(device)
    x = torch.randn(m, batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (m, batch), generator=gen).to(device)
    P = sum(p.numel() for p in model.parameters())
    out = torch.empty(m, P, device=device)
    reps = repeats if m <= 100 else 1
    res: dict[str, Any] = {"clients": m, "params": P}
    for backend in BACKENDS:
        t = timeit(
            lambda b=backend: client_gradients(
                model, x, y, F.cross_entropy, b, chunk_size=chunk, out=out
            ),
            reps,
            sync=device_sync(device),
        )
        t["ms_per_client"] = t["min_ms"] / m
        res[backend] = t
    best = min(BACKENDS, key=lambda b: res[b]["min_ms"])
    res["fastest"] = best
    res["speedup_threads_over_loop"] = res["loop"]["min_ms"] / res["threads"]["min_ms"]
    res["speedup_vmap_over_loop"] = res["loop"]["min_ms"] / res["vmap"]["min_ms"]
    return res


def bench_chunks(
    model_name: str, m: int, batch: int, device: str, repeats: int, chunks: Sequence[int]
) -> dict[str, Any]:
    """vmap seconds per round for each chunk size (clients per vmap call)."""
    gen = torch.Generator().manual_seed(1)
    model = make_model(model_name).to(device)
    x = torch.randn(m, batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (m, batch), generator=gen).to(device)
    out = torch.empty(m, sum(p.numel() for p in model.parameters()), device=device)
    res: dict[str, Any] = {}
    for c in sorted({min(c, m) for c in chunks}):
        res[str(c)] = timeit(
            lambda c=c: client_gradients(
                model, x, y, F.cross_entropy, "vmap", chunk_size=c, out=out
            ),
            repeats,
            sync=device_sync(device),
        )
    best = min(res, key=lambda c: res[c]["min_ms"])
    return {"clients": m, "timings": res, "best_chunk": int(best)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--clients", type=_ints, default=[10, 100, 1000])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="mnist_cnn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="vmap chunk in the backend table (default: the simulator's, 10 on CPU, all on CUDA)",
    )
    ap.add_argument("--quick", action="store_true", help="10 and 100 clients, 2 repeats")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.clients = [m for m in args.clients if m <= 100]
        args.repeats = min(args.repeats, 2)
    device = args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")
    console = Console()
    report: dict[str, Any] = {
        "benchmark": "engine",
        "model": args.model,
        "batch_size": args.batch,
        "default_backend": default_backend(device),
        **machine_info(device),
        "backends": [],
    }
    table = Table(
        title=f"gradients of one round: {args.model}, batch {args.batch}, {device}, "
        f"{torch.get_num_threads()} torch threads",
        title_justify="left",
    )
    for col in ("clients", *(f"{b} s" for b in BACKENDS), *(f"{b} ms/client" for b in BACKENDS)):
        table.add_column(col, justify="right")
    table.add_column("fastest")
    for m in args.clients:
        chunk = args.chunk or default_vmap_chunk(device, m)
        r = bench_backends(args.model, m, args.batch, device, args.repeats, chunk)
        r["vmap_chunk"] = chunk
        report["backends"].append(r)
        table.add_row(
            str(m),
            *(f"{r[b]['min_ms'] / 1000:.3f}" for b in BACKENDS),
            *(f"{r[b]['ms_per_client']:.2f}" for b in BACKENDS),
            r["fastest"],
        )
    console.print(table)
    m_chunks = 100 if 100 in args.clients else max(args.clients)
    ch = bench_chunks(args.model, m_chunks, args.batch, device, args.repeats, CHUNKS)
    report["vmap_chunks"] = ch
    console.print(
        f"vmap chunk sweep at {m_chunks} clients: "
        + ", ".join(f"{c}: {v['min_ms'] / 1000:.3f} s" for c, v in ch["timings"].items())
        + f"; best chunk {ch['best_chunk']}"
    )
    suffix = "" if torch.device(device).type == "cpu" else f"-{torch.device(device).type}"
    path = write_report(report, args.out or f"results/benchmarks/engine{suffix}.json")
    console.print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()

"""Paper-scale model benchmark: seconds per round of the CIFAR-10 and FEMNIST presets.

CIFAR-10 and FEMNIST are not on this machine, so the round is timed on random tensors of the
right shapes (compute does not depend on pixel values): the authors' ResNet-18 CIFAR variant with
10 clients x 128 images of 3x32x32 (preset ``cifar10``) and LEAF's FEMNIST CNN with 35 clients x
32 images of 1x28x28 (preset ``femnist``); clients, batch size and c_max are read from the
presets. For each model: every client's gradient (training mode, so batch norm uses batch
statistics) with the ``loop``, the ``threads`` (CPU only; models without batch norm, which it
would run with the loop) and the ``vmap`` backend (vmap in the largest chunk of clients that
fits in the memory budget, or skipped when not even one client fits), TESSERACT's aggregation of
the ``[m, P]`` matrix in steady state, one round = gradients + aggregation, and the projected
time of a 2000-round run (paper Table 1; evaluation not included). ``--quick`` times loop and
threads on two clients and vmap on one call of its chunk, and scales them linearly to the preset's
clients (marked with a star).

    .venv/bin/python -m benchmarks models [--device cuda] [--quick] [--repeats 2]
        [--out results/benchmarks/models.json]  (models-cuda.json with --device cuda)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from benchmarks._timing import device_sync, machine_info, timeit, write_report
from tesseract_fl.aggregators import make_aggregator
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.models import count_parameters, make_model
from tesseract_fl.simulation.gradients import Backend, client_gradients

#: Preset -> (input shape of one sample, number of classes) of its dataset.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "cifar10": ((3, 32, 32), 10),
    "femnist": ((1, 28, 28), 62),
}
#: Rounds of the paper's CIFAR-10 and FEMNIST runs (Table 1), for the projection.
PAPER_ROUNDS = 2000
#: Clients actually timed with ``--quick`` (the rest is extrapolated linearly).
QUICK_CLIENTS = 2
#: Share of the free memory the vmap backend may plan to use.
MEMORY_SHARE = 0.4
#: Activation bytes per sample are multiplied by this for the vmap estimate (saved activations,
#: their gradients and vmap's batched copies).
ACTIVATION_FACTOR = 4.0


def free_memory(device: torch.device) -> int:
    """Bytes available for new tensors on ``device`` (MemAvailable on Linux CPUs)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30  # unknown: assume a modest 4 GiB


def activation_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every module output in one training-mode forward pass of ``sample``."""
    total = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return total


def vmap_chunk(
    model: nn.Module, sample: torch.Tensor, batch: int, m: int, budget: int
) -> tuple[int, int]:
    """The largest number of clients per vmap call that fits ``budget`` bytes (at most ``m``),
    and the estimated bytes per client (activations of its batch and its parameter gradient)."""
    per_sample = activation_bytes(model, sample)
    per_client = int(ACTIVATION_FACTOR * per_sample * batch) + 8 * count_parameters(model)
    return max(0, min(m, budget // max(1, per_client))), per_client


def time_backend(
    model: nn.Module,
    backend: Backend,
    clients: int,
    batch: int,
    shape: tuple[int, ...],
    classes: int,
    chunk: int,
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    """Median and spread of one round of ``clients`` gradients with ``backend`` (random data)."""
    x = torch.randn(clients, batch, *shape, device=device)
    y = torch.randint(0, classes, (clients, batch), device=device)
    out = torch.empty(clients, count_parameters(model), device=device)

    def call() -> None:
        client_gradients(model, x, y, F.cross_entropy, backend, chunk_size=chunk, out=out)

    # warm-up on one client (allocator, kernel selection), outside the timed calls
    client_gradients(model, x[:1], y[:1], F.cross_entropy, backend, chunk_size=1, out=out[:1])
    return timeit(call, repeats, warmup=0, sync=device_sync(device))


def bench_preset(
    preset: str, device: torch.device, repeats: int, quick: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """Time one preset's model at its paper scale; the JSON record.

    ``quick``: the loop is timed on ``QUICK_CLIENTS`` clients and vmap on one call of its chunk
    (the number of clients per call a full round uses), each scaled to the preset's clients.
    """
    cfg = resolve_config(preset)
    shape, classes = SHAPES[preset]
    m, b = cfg.clients, cfg.batch_size
    torch.manual_seed(0)
    model = make_model(cfg.model, num_classes=classes).to(device).train()
    P = count_parameters(model)
    log(f"{preset}: {cfg.model} ({P:,} parameters), {m} clients x {b}")
    budget = int(MEMORY_SHARE * free_memory(device))
    sample = torch.randn(1, *shape, device=device)
    chunk, per_client = vmap_chunk(model, sample, b, m, budget)
    backends: dict[str, dict[str, Any]] = {}
    has_bn = any(True for _ in model.buffers())
    names: tuple[Backend, ...] = ("loop", "vmap")
    if device.type == "cpu":
        names = ("loop", "threads", "vmap")
    for backend in names:
        if backend == "threads" and has_bn:
            backends["threads"] = {
                "skipped": "the model has batch norm buffers: the threads backend runs the loop"
            }
            log("  threads: skipped (batch norm: it falls back to the loop)")
            continue
        if backend == "vmap" and chunk == 0:
            backends["vmap"] = {
                "skipped": f"one client needs about {per_client / 2**30:.1f} GiB, more than the "
                f"{budget / 2**30:.1f} GiB budget ({MEMORY_SHARE:.0%} of free memory)"
            }
            log(f"  vmap: skipped ({backends['vmap']['skipped']})")
            continue
        timed = (chunk if backend == "vmap" else min(m, QUICK_CLIENTS)) if quick else m
        ms = time_backend(model, backend, timed, b, shape, classes, chunk, repeats, device)
        backends[backend] = {
            "chunk": chunk if backend == "vmap" else None,
            "clients_timed": timed,
            "timed_ms": ms,
            "seconds": (m / timed) * ms["median_ms"] / 1e3,
        }
        if backend == "vmap":
            backends[backend]["estimated_bytes_per_client"] = per_client
        log(f"  {backend}: {backends[backend]['seconds']:.2f} s of gradients per round")
    # TESSERACT on the full [m, P] matrix, in steady state (round 1 has no reference sign yet)
    G = torch.randn(m, P, device=device)
    agg = make_aggregator("tesseract", num_clients=m, c_max=cfg.resolved_c_max)
    agg.aggregate(G)
    tess = timeit(lambda: agg.aggregate(G), max(repeats, 3), warmup=0, sync=device_sync(device))
    log(f"  TESSERACT aggregate: {tess['median_ms'] / 1e3:.3f} s")
    for entry in backends.values():
        if "seconds" in entry:
            entry["extrapolated"] = entry["clients_timed"] < m
            entry["round_s"] = entry["seconds"] + tess["median_ms"] / 1e3
            entry["projected_hours"] = PAPER_ROUNDS * entry["round_s"] / 3600
    return {
        "preset": preset,
        "model": cfg.model,
        "params": P,
        "clients": m,
        "batch_size": b,
        "input_shape": list(shape),
        "c_max": cfg.resolved_c_max,
        "backends": backends,
        "tesseract_aggregate_s": tess["median_ms"] / 1e3,
        "tesseract_aggregate_ms": tess,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per backend")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"time {QUICK_CLIENTS} clients per model and extrapolate to the preset's clients",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--presets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--out", default=None, help="default results/benchmarks/models[-cuda].json")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    console = Console()
    results = [
        bench_preset(
            p, device, args.repeats, args.quick, lambda s: console.print(s, highlight=False)
        )
        for p in args.presets
    ]
    info = machine_info(device)
    info["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    table = Table(
        title=f"seconds per round at paper scale on {info['device']} "
        f"({info.get('gpu', info['processor'])}, {info['torch_threads']} torch threads)"
    )
    for col, justify in (
        ("preset / model", "left"),
        ("params", "right"),
        ("clients x batch", "right"),
        ("backend", "left"),
        ("gradients s", "right"),
        ("TESSERACT s", "right"),
        ("round s", "right"),
        (f"{PAPER_ROUNDS} rounds", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in results:
        for name, e in r["backends"].items():
            label = name if e.get("chunk") is None else f"{name} (chunk {e['chunk']})"
            if "skipped" in e:
                table.add_row(f"{r['preset']} / {r['model']}", f"{r['params']:,}",
                              f"{r['clients']} x {r['batch_size']}", f"{name}: skipped",
                              "-", "-", "-", "-")  # fmt: skip
                continue
            est = "*" if e["extrapolated"] else ""
            table.add_row(
                f"{r['preset']} / {r['model']}",
                f"{r['params']:,}",
                f"{r['clients']} x {r['batch_size']}",
                label,
                f"{e['seconds']:.2f}{est}",
                f"{r['tesseract_aggregate_s']:.3f}",
                f"{e['round_s']:.2f}{est}",
                f"{e['projected_hours']:.1f} h{est}",
            )
    console.print(table)
    for r in results:
        for name, e in r["backends"].items():
            if e.get("extrapolated"):
                console.print(
                    f"* {r['preset']} {name}: timed on {e['clients_timed']} clients, scaled to "
                    f"{r['clients']}",
                    highlight=False,
                )
    for r in results:
        if "skipped" in r["backends"].get("vmap", {}):
            console.print(f"{r['preset']}: vmap skipped: {r['backends']['vmap']['skipped']}")
    report = {
        "benchmark": "models",
        "quick": args.quick,
        "repeats": args.repeats,
        "paper_rounds": PAPER_ROUNDS,
        "data": "random tensors of the datasets' shapes (CIFAR-10 and FEMNIST are not here)",
        "machine": info,
        "results": results,
    }
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    path = write_report(report, args.out or f"results/benchmarks/models{suffix}.json")
    console.print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()

"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--quick] [--device cuda]``.

Without names, every benchmark runs in turn (tens of minutes on 2 CPU cores; ``--quick`` cuts
repeats and sizes to a few minutes). Each writes its JSON under ``results/benchmarks/``.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from collections.abc import Sequence

#: name -> (module, what it measures); run in this order.
BENCHMARKS: dict[str, str] = {
    "engine": "gradients per round: loop / threads / vmap at 10, 100, 1000 clients; vmap chunk",
    "overhead": "every defense, attack, whole round and evaluation vs the gradients (mnist)",
    "aggregators": "every aggregator on [100, 270000] and [10, 11e6] vs memory bound and ByzFL",
    "attacks": "every attack on the MNIST round shape; Full-Krum lambda search vs naive",
    "memory": "peak resident memory of a round at 100 and 1000 clients",
    "wholerun": "seconds per round of a mnist TESSERACT + Full-Trim run; Table 2 projection",
    "authors": "ours vs the authors' published code (FLAIR) on the padded MNIST DNN",
    "flower": "seconds per round: Flower's simulation engine (Ray, 10 clients) vs ours",
    "flower_fedavg": "seconds per FedAvg round (2 local epochs): Flower's FedAvg example vs ours",
    "models": "paper-scale seconds per round: CIFAR-10 ResNet-18, FEMNIST CNN; 2000-round time",
    "compile": "torch.compile vs eager for one client's forward + backward; compile time",
    "gru": "Shakespeare char GRU round: nn.GRU's fused kernel vs the matmul form, per backend",
}
#: Benchmarks that take ``--device``.
DEVICE_AWARE = {"engine", "models", "overhead"}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="benchmarks: " + "; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()),
    )
    ap.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    ap.add_argument("--device", default=None, help="device for the device-aware benchmarks")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, rest = ap.parse_known_args(argv)
    if args.list:
        for k, v in BENCHMARKS.items():
            print(f"{k:12s} {v}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    if rest and len(names) != 1:
        ap.error(f"extra options {rest} need exactly one benchmark name")
    failed: list[str] = []
    for name in names:
        sub = list(rest)
        if args.quick:
            sub.append("--quick")
        if args.device and name in DEVICE_AWARE:
            sub += ["--device", args.device]
        print(f"==> {name}: {BENCHMARKS[name]}", flush=True)
        t = time.perf_counter()
        if len(names) == 1:
            try:
                importlib.import_module(f"benchmarks.{name}").main(sub)
            except Exception as exc:
                print(f"benchmark {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed.append(name)
        else:
            # Each benchmark in a fresh process: no heap state, allocator setting (the simulator
            # applies simulation/heap.py) or peak memory carries over from the one before.
            rc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *sub]).returncode
            if rc != 0:  # keep going: one broken benchmark must not hide the others
                print(f"benchmark {name} failed (exit code {rc})", file=sys.stderr)
                failed.append(name)
        print(f"    ({time.perf_counter() - t:.0f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared helpers of the benchmarks: wall-clock timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch


def timeit(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """``min_ms`` / ``median_ms`` / ``max_ms`` of ``fn()`` over ``repeats`` calls after warm-up.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read, so that queued GPU
    work is counted.
    """
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t)
    return {
        "min_ms": 1000 * min(times),
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
        "repeats": len(times),
    }


def device_sync(device: torch.device | str) -> Callable[[], None] | None:
    """The synchronize function to pass to :func:`timeit` for ``device`` (None on CPU)."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else None


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, versions, accelerator."""
    dev = torch.device(device)
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as indented JSON, atomically (a crash never leaves half a file)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    os.replace(tmp, out)
    return out

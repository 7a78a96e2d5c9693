"""Shared timing helper of the benchmarks: wall-clock milliseconds of repeated calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timeit(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """``min_ms`` / ``median_ms`` / ``max_ms`` of ``fn()`` over ``repeats`` calls after warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {
        "min_ms": 1000 * min(times),
        "median_ms": 1000 * statistics.median(times),
        "max_ms": 1000 * max(times),
    }

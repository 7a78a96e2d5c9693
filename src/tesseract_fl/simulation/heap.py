"""Keep freed memory in the process heap (glibc) so that per-round temporaries do not page-fault.

A round allocates and frees many ``[c, P]``- and ``[m, P]``-sized temporaries (attack rows,
random draws, sign matrices). glibc serves every allocation above its mmap threshold (at most
32 MiB) with fresh pages that the kernel zero-fills on first touch and takes back on free, so
the same memory is faulted in again every round: on the MNIST round this was a third to a half
of the Full-Trim attack's time (``python -m benchmarks overhead``). Turning off mmap for malloc
and raising the trim threshold lets freed blocks be reused. The price is that the process keeps
its peak heap size. Linux/glibc only; elsewhere, or with ``TESSERACT_FL_GLIBC_HEAP=0``, it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["ENV_VAR", "keep_freed_memory"]

ENV_VAR = "TESSERACT_FL_GLIBC_HEAP"
_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes: keep up to 2 GiB of free heap
_lock = threading.Lock()
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the heap setting once per process; True when it is in effect."""
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        _applied = False
        if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        if not sys.platform.startswith("linux"):
            return False
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        ok = mallopt(_M_MMAP_MAX, 0) == 1
        ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
        _applied = ok
        return ok

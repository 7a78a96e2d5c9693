"""Process-wide CPU tuning, behind one explicit switch.

Importing tesseract-fl or building its objects changes no process state. The command line and
:func:`~tesseract_fl.experiments.runner.run_experiment` (through ``build_simulation``) turn the
tuning on for CPU runs; a library user who builds a ``FedSGDSimulation`` directly keeps their
process as it is unless they call :func:`tune_cpu`. What it does:

- glibc's heap keeps freed memory (:mod:`tesseract_fl.simulation.heap`), so the per-round
  ``[c, P]`` temporaries are not faulted in afresh every round. It never changes a number.

The ``threads`` gradient backend's worker pool is made on its first use, not at import, and its
threads set their own (per-thread) torch thread count only.
"""

from __future__ import annotations

__all__ = ["tune_cpu"]


def tune_cpu() -> bool:
    """Apply the CPU tuning once per process; True when the heap setting is in effect
    (``TESSERACT_FL_GLIBC_HEAP=0`` or a non-glibc platform leave it off)."""
    from tesseract_fl.simulation.heap import keep_freed_memory  # torch-free, but not needed

    return keep_freed_memory()

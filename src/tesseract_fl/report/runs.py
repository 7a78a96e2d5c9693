"""Which stored runs feed a table or figure, and what the report reads of them.

Each artefact is built from the grids named after it (``table2-*``, ``table3-*``, ``fig2-*``
...): a table cell or a figure curve is the set of that grid's runs with the cell's labels, and
only runs whose status in the store is ``finished`` count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tesseract_fl.experiments.grid import Grid, RunSpec
from tesseract_fl.experiments.store import ResultsStore

__all__ = ["GridRun", "RunReader", "grid_runs", "mixed_settings", "same_fraction", "setting_key"]

#: Config keys that do not change a run's setting (seed varies within a cell; malicious_ids
#: follow from the seed; the rest change neither the numbers nor the experiment).
_NOT_SETTING = ("name", "seed", "malicious_ids", "data_dir", "device", "backend", "vmap_chunk")


@dataclass(frozen=True)
class GridRun:
    """A run planned by a grid file (the grid says how to fill it when it is missing)."""

    spec: RunSpec
    grid: Grid

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def labels(self) -> dict[str, Any]:
        return self.spec.labels


def grid_runs(grids: Iterable[Grid], prefix: str) -> list[GridRun]:
    """The runs of every grid whose name starts with ``prefix``, unique by run id."""
    out: list[GridRun] = []
    seen: set[str] = set()
    for grid in grids:
        if not grid.name.startswith(prefix):
            continue
        for spec in grid.runs:
            if spec.run_id not in seen:
                seen.add(spec.run_id)
                out.append(GridRun(spec=spec, grid=grid))
    return out


def same_fraction(a: float, b: float) -> bool:
    """Malicious fractions compare equal up to float rounding (20/100 == 0.2)."""
    return math.isclose(a, b, abs_tol=1e-9)


def setting_key(run: GridRun) -> str:
    """The run's setting without the seed: runs averaged into one cell must share it."""
    d = run.spec.config.to_dict()
    for k in _NOT_SETTING:
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)


def mixed_settings(runs: Sequence[GridRun]) -> bool:
    """True when runs of one cell differ in more than their seed (e.g. quick and paper scale)."""
    return len({setting_key(r) for r in runs}) > 1


class RunReader:
    """Read-only, cached access to the runs of a results store."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self._runs: dict[str, dict[str, Any] | None] = {}
        self._metrics: dict[str, list[dict[str, Any]]] = {}
        self._clients: dict[str, list[dict[str, Any]]] = {}

    def run(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._runs:
            self._runs[run_id] = self.store.get_run(run_id)
        return self._runs[run_id]

    def status(self, run_id: str) -> str:
        """``finished``, ``running``, ``failed``, or ``not run`` when the store lacks it."""
        run = self.run(run_id)
        return "not run" if run is None else str(run["status"])

    def finished(self, run_id: str) -> bool:
        return self.status(run_id) == "finished"

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        if run_id not in self._metrics:
            self._metrics[run_id] = self.store.metrics(run_id)
        return self._metrics[run_id]

    def clients(self, run_id: str) -> list[dict[str, Any]]:
        if run_id not in self._clients:
            self._clients[run_id] = self.store.client_records(run_id)
        return self._clients[run_id]

    def final(self, run_id: str, key: str) -> float | None:
        """``test_accuracy`` or ``test_loss`` at the last evaluated round (the runner always
        evaluates the final round, as the paper reports the final model)."""
        for row in reversed(self.metrics(run_id)):
            if row[key] is not None:
                return float(row[key])
        return None

    def class_curve(self, run_id: str, cls: int) -> list[tuple[int, float]]:
        """``(round, accuracy on class cls)`` at every evaluated round; rounds count from 1
        (empty for runs stored before per-class accuracy was recorded)."""
        out = []
        for rnd, accs in sorted(self.store.class_accuracy(run_id).items()):
            value = accs[cls] if cls < len(accs) else None
            if value is not None:
                out.append((rnd + 1, float(value)))
        return out

    def curve(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(round, value)`` for every round that recorded ``key``; rounds count from 1."""
        return [
            (int(m["round"]) + 1, float(m[key])) for m in self.metrics(run_id) if m[key] is not None
        ]

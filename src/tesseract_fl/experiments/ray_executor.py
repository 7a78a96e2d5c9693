"""Run a grid's runs as Ray tasks (docs/design.md, "Grids on Ray").

A robustness sweep is embarrassingly parallel: each pending run becomes one Ray task that loads
the driver's plugins, computes the run into a store of its own in a temporary folder and
returns every row (and its checkpoint, if it stopped early) to the driver, which writes them
into the one results store. The driver keeps the skip/resume rules of a local grid: finished
runs are skipped (stale ones kept aside and recomputed), an unfinished run travels to its task
with its rows and checkpoint so that it resumes, and the driver holds each run's claim in the
store while its task runs, so no other process computes it at the same time.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tesseract_fl.errors import ConfigError, RunBusyError
from tesseract_fl.experiments.checkpoints import checkpoint_path
from tesseract_fl.experiments.config import ExperimentConfig
from tesseract_fl.experiments.grid import RunSpec
from tesseract_fl.experiments.store import ResultsStore

__all__ = ["run_on_ray"]

#: Seconds between the driver's refreshes of the claims it holds (well below the stale rule).
HEARTBEAT_SECONDS = 60.0


def _task(
    cfg: ExperimentConfig,
    plugins: list[str],
    seed_rows: dict[str, Any] | None,
    checkpoint: bytes | None,
    force: bool,
) -> dict[str, Any]:
    """The body of one Ray task: the run computed into a private store; its rows back."""
    from tesseract_fl.experiments.grid_runner import _execute
    from tesseract_fl.plugins import load_plugins

    load_plugins(plugins)
    run_id = cfg.run_id()
    with tempfile.TemporaryDirectory(prefix="tesseract-fl-ray-") as tmp:
        store = Path(tmp) / "task.sqlite"
        with ResultsStore(store) as s:
            if seed_rows is not None:
                s.import_run(seed_rows)
        ckpt = checkpoint_path(store, run_id)
        if checkpoint is not None:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt.write_bytes(checkpoint)
        outcome = _execute(cfg, str(store), force, lambda *a: None, lambda: False, True)
        with ResultsStore(store) as s:
            rows = s.export_run(run_id)
        left = ckpt.read_bytes() if ckpt.is_file() else None
    return {"outcome": outcome, "rows": rows, "checkpoint": left}


def run_on_ray(
    pending: list[RunSpec],
    store: str,
    *,
    force: bool,
    reuse_stale: bool,
    address: str | None,
    plugins: list[str],
    on_end: Callable[[RunSpec, dict[str, Any]], None],
    result: Callable[..., dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Compute ``pending`` as Ray tasks (one CPU each) on the cluster at ``address`` (None: a
    local Ray instance); one result per run, written into ``store`` by this process."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'tesseract-fl[flower]' (Flower's simulation "
            "engine brings it)"
        ) from None
    from tesseract_fl.experiments.runner import stale_reason

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_task)
    results: dict[str, dict[str, Any]] = {}
    refs: dict[Any, RunSpec] = {}
    with ResultsStore(store) as s:
        for spec in pending:
            run_id = spec.run_id
            row = s.get_run(run_id)
            seed_rows: dict[str, Any] | None = None
            ckpt: bytes | None = None
            if row is not None and row["status"] == "finished" and not force:
                why = stale_reason(spec.config, row)
                if why and not reuse_stale:
                    s.mark_stale(run_id, why)  # kept aside, computed again below
                    row = None
            if row is not None and row["status"] != "finished" and not force:
                path = checkpoint_path(store, run_id)
                if path.is_file():  # an interrupted run resumes in its task
                    seed_rows, ckpt = s.export_run(run_id), path.read_bytes()
            try:
                s.claim(run_id)
            except RunBusyError as exc:
                results[run_id] = result(spec, "failed", error=f"RunBusyError: {exc}")
                on_end(spec, results[run_id])
                continue
            refs[remote.remote(spec.config, plugins, seed_rows, ckpt, force)] = spec
        beat = time.monotonic()
        try:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=5.0)
                if time.monotonic() - beat > HEARTBEAT_SECONDS:
                    for ref in waiting:
                        s.heartbeat(refs[ref].run_id)
                    beat = time.monotonic()
                for ref in done:
                    spec = refs[ref]
                    try:
                        out = ray.get(ref)
                    except Exception as exc:  # the task or its worker died
                        out = {"outcome": {"status": "failed", "error": f"Ray task: {exc}"}}
                    if out.get("rows") is not None:
                        s.import_run(out["rows"])
                    if out.get("checkpoint") is not None:
                        path = checkpoint_path(store, spec.run_id)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(out["checkpoint"])
                    s.release(spec.run_id)
                    results[spec.run_id] = result(spec, **out["outcome"])
                    on_end(spec, results[spec.run_id])
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            for spec in refs.values():
                s.release(spec.run_id)
            raise
    return results

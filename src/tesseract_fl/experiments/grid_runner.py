"""Run a grid: skip finished runs, resume interrupted ones, run the rest in parallel.

Each run goes through :func:`run_experiment`, so a grid run and the same run done by hand share
one stored result, and an interrupted run continues from its checkpoint. With ``jobs > 1`` the
runs execute in ``spawn``-ed worker processes (a fresh interpreter each: no forked torch thread
pools or open SQLite handles); they all write to the one SQLite store (WAL mode, 30 s busy
timeout) and report their rounds to the parent through a queue. A failing run is recorded and
the others go on. Ctrl-C sets a stop flag that the workers check after every round: they stop
at the end of their current round (a second Ctrl-C terminates them), the rounds and checkpoints
written so far stay, and running the grid again resumes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.checkpoints import checkpoint_path
from tesseract_fl.experiments.config import ExperimentConfig
from tesseract_fl.experiments.grid import Grid, RunSpec
from tesseract_fl.experiments.runner import (
    DEFAULT_STORE,
    rounds_claimed,
    run_experiment,
    stale_reason,
)
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.plugins import load_plugins, loaded_plugins

__all__ = ["GridEvent", "GridProgressFn", "grid_status", "run_grid"]


@dataclass
class GridEvent:
    """What :func:`run_grid` reports to its ``progress`` callback.

    ``kind``: ``"start"`` once before any run (``spec`` None), ``"round"`` after every round
    of any run, ``"done"`` when a run ends (``result`` is its entry of the returned list).
    ``rounds_done`` / ``rounds_total`` count the rounds of the runs to execute, over the whole
    grid; rounds a run resumes past (restored from its checkpoint) leave the total, and so do
    the rounds a failed run will not do.
    """

    kind: Literal["start", "round", "done"]
    spec: RunSpec | None
    rounds_done: int
    rounds_total: int
    runs_done: int
    runs_total: int
    result: dict[str, Any] | None = None


GridProgressFn = Callable[[GridEvent], None]


def grid_status(
    grid: Grid, store: str | Path = DEFAULT_STORE, *, reuse_stale: bool = False
) -> list[dict[str, Any]]:
    """Each run's state in the store: ``finished``, ``stale`` (finished by code other than the
    current one; unless ``reuse_stale``), ``partial`` (started, not finished: its
    ``rounds_done`` and whether a checkpoint exists) or ``new``; in grid order."""
    store_path = Path(store)
    out: list[dict[str, Any]] = []
    if not store_path.exists():  # nothing run yet: every run is new (and no store is made)
        return [_new_state(spec) for spec in grid.runs]
    with ResultsStore(store_path, readonly=True) as s:
        for spec in grid.runs:
            row = s.get_run(spec.run_id)
            if row is None:
                out.append(_new_state(spec))
                continue
            status = "finished" if row["status"] == "finished" else "partial"
            done = int(row["rounds_done"])
            if status == "finished" and not reuse_stale and stale_reason(spec.config, row):
                status = "stale"  # computed by other code: run_experiment computes it again
            if status == "finished" and s.missing_rounds(
                spec.run_id, rounds_claimed(spec.config, row["summary"])
            ):
                status = "partial"  # finished with holes: the run is redone (run_experiment)
            out.append(
                {
                    "spec": spec,
                    "status": status,
                    "rounds_done": done,
                    "checkpoint": checkpoint_path(store_path, spec.run_id).is_file(),
                    "summary": None if row is None else row["summary"],
                }
            )
    return out


def _new_state(spec: RunSpec) -> dict[str, Any]:
    return {"spec": spec, "status": "new", "rounds_done": 0, "checkpoint": False, "summary": None}


def _result(spec: RunSpec, status: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "run_id": spec.run_id,
        "name": spec.config.name,
        "labels": spec.labels,
        "status": status,
        "final_accuracy": None,
        "final_loss": None,
        "seconds": None,
        "resumed_from": None,
        "diverged_at": None,
        "error": None,
    }
    out.update(fields)
    return out


# Progress reporting: (run_id, rounds done, rounds total, test accuracy, resumed_from).
_Report = Callable[[str, int, int, float | None, int | None], None]


def _execute(
    cfg: ExperimentConfig,
    store: str,
    force: bool,
    report: _Report,
    should_stop: Callable[[], bool],
    reuse_stale: bool = False,
) -> dict[str, Any]:
    """Run one config; an ordinary exception becomes a ``failed`` outcome (the next run goes
    on), Ctrl-C or ``should_stop()`` after a round propagates as KeyboardInterrupt."""
    run_id = cfg.run_id()

    def progress(done: int, total: int, info: dict[str, Any]) -> None:
        report(run_id, done, total, info.get("acc"), info.get("resumed_from"))
        if should_stop():
            raise KeyboardInterrupt

    try:
        summary = run_experiment(
            cfg, store, force=force, progress=progress, reuse_stale=reuse_stale
        )
    except Exception as exc:
        msg = str(exc)
        return {"status": "failed", "error": f"{type(exc).__name__}: {msg}" if msg else repr(exc)}
    return {
        "status": "finished",
        "final_accuracy": summary.final_accuracy,
        "final_loss": summary.final_loss,
        "seconds": summary.seconds,
        "resumed_from": summary.resumed_from,
        "diverged_at": summary.diverged_at,
        "replaced_stale": summary.replaced_stale,
    }


# -- worker processes (module level: ``spawn`` pickles them by name) ---------------------------
_worker_queue: Any = None
_worker_stop: Any = None


def _init_worker(q: Any, stop: Any, threads: int, plugins: list[str]) -> None:
    """Per worker: load the parent's plugins (a spawned interpreter starts with the built-ins
    only), share the CPU among the jobs; leave Ctrl-C to the parent (which asks the workers to
    stop after their current round through ``stop``)."""
    global _worker_queue, _worker_stop
    load_plugins(plugins)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _worker_queue, _worker_stop = q, stop
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A worker whose grid process died (``kill -9``) exits at once instead of finishing its
    run and idling: its run stays unfinished, owned by a dead process, and the next grid
    resumes it from its checkpoint."""
    while True:
        time.sleep(every)
        if os.getppid() != parent:
            os._exit(3)


def _worker_run(
    cfg: ExperimentConfig, store: str, force: bool, reuse_stale: bool = False
) -> dict[str, Any]:
    if _worker_stop.is_set():
        return {"status": "cancelled"}

    def report(run_id: str, done: int, total: int, acc: float | None, res: int | None) -> None:
        _worker_queue.put((run_id, done, total, acc, res))

    try:
        return _execute(cfg, store, force, report, _worker_stop.is_set, reuse_stale)
    except KeyboardInterrupt:
        return {"status": "interrupted"}


class _Tracker:
    """Turns per-run round reports into grid-wide :class:`GridEvent`s."""

    def __init__(self, pending: list[RunSpec], runs_total: int, fn: GridProgressFn | None):
        self.fn = fn
        self.specs = {s.run_id: s for s in pending}
        self.rounds_total = sum(s.config.rounds for s in pending)
        self.runs_total = runs_total
        self.runs_done = runs_total - len(pending)
        self.skipped: dict[str, int] = {}  # run id -> rounds restored from a checkpoint
        self.done: dict[str, int] = {}  # run id -> rounds done here
        self.ended: set[str] = set()

    def _emit(self, kind: Any, spec: RunSpec | None, result: dict[str, Any] | None) -> None:
        if self.fn is not None:
            self.fn(
                GridEvent(
                    kind=kind,
                    spec=spec,
                    rounds_done=sum(self.done.values()),
                    rounds_total=self.rounds_total,
                    runs_done=self.runs_done,
                    runs_total=self.runs_total,
                    result=result,
                )
            )

    def start(self) -> None:
        self._emit("start", None, None)

    def round(self, run_id: str, done: int, total: int, acc: float | None, res: int | None) -> None:
        if run_id in self.ended or run_id not in self.specs:
            return  # a late message of a run already reported done
        if run_id not in self.skipped:
            self.skipped[run_id] = res or 0
            self.rounds_total -= res or 0
        self.done[run_id] = done - self.skipped[run_id]
        self._emit("round", self.specs[run_id], None)

    def end(self, spec: RunSpec, result: dict[str, Any]) -> None:
        rid = spec.run_id
        self.ended.add(rid)
        self.runs_done += 1
        skipped = self.skipped.get(rid, result.get("resumed_from") or 0)
        if rid not in self.skipped:
            self.rounds_total -= skipped
        if result["status"] == "finished":
            self.done[rid] = spec.config.rounds - skipped
        else:  # the rounds it will not do leave the total
            self.rounds_total -= spec.config.rounds - skipped - self.done.get(rid, 0)
        self._emit("done", spec, result)


def _run_serial(
    pending: list[RunSpec], store: str, force: bool, tracker: _Tracker, reuse_stale: bool
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for spec in pending:
        outcome = _execute(spec.config, store, force, tracker.round, lambda: False, reuse_stale)
        results[spec.run_id] = _result(spec, **outcome)
        tracker.end(spec, results[spec.run_id])
    return results


def _run_parallel(
    pending: list[RunSpec],
    store: str,
    force: bool,
    jobs: int,
    tracker: _Tracker,
    reuse_stale: bool,
) -> dict[str, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: dict[str, dict[str, Any]] = {}

    def drain() -> None:
        while True:
            try:
                msg = q.get_nowait()
            except queue_mod.Empty:
                return
            tracker.round(*msg)

    def collect(fut: Future[dict[str, Any]], spec: RunSpec) -> None:
        try:
            outcome = fut.result()
        except BrokenProcessPool as exc:
            outcome = {"status": "failed", "error": f"worker process died: {exc}"}
        except Exception as exc:  # e.g. a result that could not be pickled back
            outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        if outcome["status"] in ("interrupted", "cancelled"):
            return
        results[spec.run_id] = _result(spec, **outcome)
        tracker.end(spec, results[spec.run_id])

    ex = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(q, stop, threads, loaded_plugins()),
    )
    futures = {ex.submit(_worker_run, s.config, store, force, reuse_stale): s for s in pending}
    try:
        waiting: set[Future[dict[str, Any]]] = set(futures)
        while waiting:
            done, waiting = wait(waiting, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for fut in done:
                collect(fut, futures[fut])
        drain()
    except BaseException:
        # Ctrl-C (or an error in a progress callback): workers finish their current round,
        # queued runs do not start; a second Ctrl-C terminates the workers outright.
        stop.set()
        for fut in futures:
            fut.cancel()
        try:
            ex.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:
            for proc in list(getattr(ex, "_processes", {}).values()):
                proc.terminate()
            ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return results


def run_grid(
    grid: Grid,
    store: str | Path = DEFAULT_STORE,
    jobs: int = 1,
    force: bool = False,
    data_dir: str | None = None,
    progress: GridProgressFn | None = None,
    reuse_stale: bool = False,
    executor: str = "local",
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Run every run of ``grid`` not yet finished in ``store``; one result dict per run, in grid
    order: ``run_id``, ``name``, ``labels``, ``status`` (``skipped``: finished before,
    ``finished``, ``failed``), ``final_accuracy``, ``final_loss``, ``seconds``,
    ``resumed_from`` and ``error``.

    ``jobs`` runs execute at once, each in its own process with ``cpu_count // jobs`` torch
    threads (``jobs = 1``, or one pending run: in this process). ``force`` reruns finished runs
    too (from scratch); a run finished by other code (``stale``) is computed again unless
    ``reuse_stale``. ``executor = "ray"`` runs them as Ray tasks (on the cluster at
    ``address``, else a local Ray instance; ``jobs`` is then Ray's to decide), written into
    ``store`` by this process (experiments/ray_executor.py). ``data_dir`` replaces every
    run's data directory (not part of run ids).
    A failing run does not stop the others; Ctrl-C raises KeyboardInterrupt once the running
    runs have stopped (their rounds and checkpoints stay, so the next call resumes them).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be an integer >= 1, got {jobs!r}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor = {executor!r}; allowed: local, ray")
    if address is not None and executor != "ray":
        raise ConfigError("address goes with executor = 'ray' (a Ray cluster's address)")
    specs = [
        s if data_dir is None else dataclasses.replace(s, config=_with_data_dir(s, data_dir))
        for s in grid.runs
    ]
    results: dict[str, dict[str, Any]] = {}
    pending: list[RunSpec] = []
    states = grid_status(grid, store, reuse_stale=reuse_stale)
    for spec, state in zip(specs, states, strict=True):
        if state["status"] == "finished" and not force:
            summary = state["summary"] or {}
            results[spec.run_id] = _result(
                spec,
                "skipped",
                final_accuracy=summary.get("final_accuracy"),
                final_loss=summary.get("final_loss"),
                seconds=summary.get("seconds"),
                diverged_at=summary.get("diverged_at"),
            )
        else:
            pending.append(spec)
    tracker = _Tracker(pending, len(specs), progress)
    tracker.start()
    workers = min(jobs, len(pending))
    if executor == "ray" and pending:
        from tesseract_fl.experiments.ray_executor import run_on_ray

        results.update(
            run_on_ray(
                pending,
                str(store),
                force=force,
                reuse_stale=reuse_stale,
                address=address,
                plugins=loaded_plugins(),
                on_end=tracker.end,
                result=_result,
            )
        )
    elif workers <= 1:
        results.update(_run_serial(pending, str(store), force, tracker, reuse_stale))
    else:
        results.update(_run_parallel(pending, str(store), force, workers, tracker, reuse_stale))
    return [results[s.run_id] for s in specs]


def _with_data_dir(spec: RunSpec, data_dir: str) -> ExperimentConfig:
    return dataclasses.replace(spec.config, data_dir=str(data_dir))

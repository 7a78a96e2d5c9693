"""One process at a time writes a run; a finished run has every round; grid workers die with
their grid."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tesseract_fl
from tesseract_fl.errors import RunBusyError, StoreError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore, RoundMetrics


def _env() -> dict[str, str]:
    src = str(Path(tesseract_fl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _rounds(store: Path, run_id: str) -> int:
    with ResultsStore(store) as s:
        run = s.get_run(run_id)
    return 0 if run is None else int(run["rounds_done"])


def _wait(cond, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_second_process_on_a_running_run_is_refused(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    overrides = [*tiny_overrides, "rounds=60", "checkpoint_every=0"]
    cfg = resolve_config("mnist", overrides=overrides)
    store = tmp_path / "s.sqlite"
    args = [sys.executable, "-m", "tesseract_fl.cli", "run", "--preset", "mnist"]
    args += ["--store", str(store), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: _rounds(store, cfg.run_id()) >= 1 or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        with pytest.raises(RunBusyError, match=f"being run by process {proc.pid}"):
            run_experiment(cfg, store)
        assert proc.wait(timeout=300) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    with ResultsStore(store) as s:
        assert s.missing_rounds(cfg.run_id(), 60) == []
        assert s.get_run(cfg.run_id())["status"] == "finished"  # type: ignore[index]
    assert run_experiment(cfg, store).cached is True


def test_owner_that_died_is_taken_over(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=tiny_overrides)
    store = tmp_path / "s.sqlite"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with ResultsStore(store) as s, s.transaction() as c:
        c.execute(
            "INSERT INTO owners VALUES (?, 'old', ?, ?, ?)",
            (cfg.run_id(), socket.gethostname(), dead.pid, time.time()),
        )
    assert run_experiment(cfg, store).cached is False
    # A live owner on another host is taken over only once it has been silent long enough.
    other = resolve_config("mnist", overrides=[*tiny_overrides, "seed=3"])
    with ResultsStore(store) as s, s.transaction() as c:
        c.execute(
            "INSERT INTO owners VALUES (?, 'x', 'elsewhere', 1, ?)", (other.run_id(), time.time())
        )
    with pytest.raises(RunBusyError, match="elsewhere"):
        run_experiment(other, store)
    with ResultsStore(store) as s, s.transaction() as c:
        c.execute("UPDATE owners SET heartbeat = ? WHERE run_id = ?", (0.0, other.run_id()))
    assert run_experiment(other, store).cached is False
    with ResultsStore(store) as s:
        assert s.conn.execute("SELECT COUNT(*) FROM owners").fetchone()[0] == 0


def test_finished_run_with_holes_is_run_again(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=tiny_overrides)
    store = tmp_path / "s.sqlite"
    first = run_experiment(cfg, store)
    con = sqlite3.connect(store)
    with con:
        con.execute("DELETE FROM metrics WHERE run_id = ? AND round IN (2, 3)", (cfg.run_id(),))
    con.close()
    with pytest.warns(RuntimeWarning, match="2 of its 6 rounds are missing"):
        again = run_experiment(cfg, store)
    assert again.cached is False and again.final_loss == first.final_loss
    with ResultsStore(store) as s:
        assert s.missing_rounds(cfg.run_id(), 6) == []
    assert run_experiment(cfg, store).cached is True


def test_finish_refuses_holes_and_a_lost_claim_stops_writes(tmp_path: Path) -> None:
    store = tmp_path / "s.sqlite"
    with ResultsStore(store) as s:
        s.start_run("r", "n", {}, {})
        s.claim("r")
        s.write_round("r", 0, RoundMetrics(lr=0.1))
        s.write_round("r", 2, RoundMetrics(lr=0.1))
        with pytest.raises(StoreError, match="1 of its 3 rounds are missing"):
            s.finish_run("r", {"rounds": 3})
        assert s.get_run("r")["status"] == "running"  # type: ignore[index]
        with s.transaction() as c:  # another process takes the run over
            c.execute("UPDATE owners SET token = 'theirs' WHERE run_id = 'r'")
        with pytest.raises(RunBusyError, match="took it over"):
            s.write_round("r", 1, RoundMetrics(lr=0.1))
        s.fail_run("r", "ours")  # not ours any more: nothing written
        assert s.get_run("r")["status"] == "running"  # type: ignore[index]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with open(task / "children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_grid_workers_exit_when_the_grid_is_killed(tmp_path: Path, tiny_data_dir: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text(
        'name = "kill"\nseeds = [0, 1]\n[datasets]\nmnist = "mnist"\n'
        f'[set]\ndata_dir = "{tiny_data_dir}"\nclients = 10\nmalicious = 2\nrounds = 400\n'
        'batch_size = 8\n[[cells]]\nattack = "none"\ndefense = "fedsgd"\n'
    )
    store = tmp_path / "s.sqlite"
    args = [sys.executable, "-m", "tesseract_fl.cli", "grid", str(grid), "--jobs", "2"]
    proc = subprocess.Popen(
        [*args, "--store", str(store)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    workers: list[int] = []
    try:

        def running() -> bool:
            nonlocal workers
            if not store.exists():
                return False
            with ResultsStore(store) as s:
                owners = [r[0] for r in s.conn.execute("SELECT pid FROM owners")]
            workers = [w for w in owners if w in _children(proc.pid)]
            return len(workers) == 2

        _wait(running)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait(lambda: not any(_alive(w) for w in workers), timeout=30)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        proc.kill()
        proc.wait()

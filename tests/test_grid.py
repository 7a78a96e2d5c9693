"""Grids: expansion, checkpoint/resume, the parallel grid runner and `tesseract-fl grid`.

Runs use the tiny IDX fixture. Torch runs on one thread here: the resume tests compare numbers
with runs done in other processes (with one thread each), and one thread is also the fastest
setting on a small shared CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tesseract_fl
from tesseract_fl.cli import main
from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.checkpoints import checkpoint_path, load_checkpoint
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.grid import expand_grid, list_grids, load_grid
from tesseract_fl.experiments.grid_runner import GridEvent, grid_status, run_grid
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _raw(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"name": "g", "datasets": {"mnist": "mnist"}, "cells": [{}]}
    raw.update(extra)
    return raw


def _dump(store: Path, run_id: str) -> tuple[Any, ...]:
    """Everything a run wrote per round (metrics, per-client records, attack records)."""
    with ResultsStore(store) as s:
        return s.metrics(run_id), s.client_records(run_id), s.attack_records(run_id)


def _stop_at(round_: int) -> Any:
    def progress(done: int, total: int, info: dict[str, Any]) -> None:
        if done == round_:
            raise KeyboardInterrupt

    return progress


def _updated_at(store: Path) -> dict[str, float]:
    with ResultsStore(store) as s:
        return {r["run_id"]: r["updated_at"] for r in s.list_runs()}


# -- expansion ---------------------------------------------------------------------------------
def test_expansion_is_the_product_of_axes_per_block_and_seed() -> None:
    grid = expand_grid(
        _raw(
            seeds=[0, 1],
            set={"rounds": 5},
            cells=[
                {"attack": "none", "defense": ["fedsgd", "tesseract"]},
                {
                    "attack": "full_trim",
                    "defense": ["trimmed_mean", "median"],
                    "malicious_fraction": [0.1, 0.3],
                },
                {"defense": "krum", "seed": 7},
            ],
        )
    )
    assert len(grid.runs) == 2 * 2 + 2 * 2 * 2 + 1
    assert len({r.run_id for r in grid.runs}) == len(grid.runs)
    assert all(r.config.rounds == 5 for r in grid.runs)
    assert {r.config.seed for r in grid.runs[:-1]} == {0, 1} and grid.runs[-1].config.seed == 7
    trim = [r for r in grid.runs if r.config.attack == "full_trim"]
    assert sorted({r.config.malicious for r in trim}) == [10, 30]
    assert all(r.config.resolved_c_max == r.config.malicious for r in trim)
    one = next(
        r
        for r in trim
        if r.config.defense == "median" and r.config.malicious == 30 and r.config.seed
    )
    assert one.labels == {
        "dataset": "mnist",
        "preset": "mnist",
        "attack": "full_trim",
        "defense": "median",
        "seed": 1,
        "malicious_fraction": 0.3,
    }
    assert one.config.name == "g/mnist/full_trim/median/s1"


def test_each_dataset_uses_its_preset() -> None:
    grid = expand_grid(
        _raw(
            datasets={"mnist": "mnist", "quick": "demo"},
            cells=[{"defense": "fedsgd"}, {"dataset": "quick", "defense": "median"}],
        )
    )
    got = [
        (r.labels["dataset"], r.labels["preset"], r.config.defense, r.config.rounds)
        for r in grid.runs
    ]
    assert got == [
        ("mnist", "mnist", "fedsgd", 500),
        ("quick", "demo", "fedsgd", 120),
        ("quick", "demo", "median", 120),
    ]
    assert grid.runs[1].config.attack == "full_trim"  # the demo preset's attack


def test_duplicate_runs_are_dropped() -> None:
    grid = expand_grid(
        _raw(
            cells=[
                {"defense": ["fedsgd", "fedsgd"]},
                {"defense": "fedsgd", "malicious_fraction": 0.2},  # = the preset's 20 of 100
                {"defense": "fedsgd", "data_dir": "/elsewhere"},  # data_dir is not in the id
            ]
        )
    )
    assert len(grid.runs) == 1


def test_grid_runs_have_the_ids_of_hand_runs(tmp_path: Path) -> None:
    grid_file = tmp_path / "g.toml"
    grid_file.write_text(
        """
        name = "g"
        seeds = [3]
        [datasets]
        mnist = "mnist"
        [set]
        rounds = 50
        [[cells]]
        attack = "full_trim"
        defense = "median"
        malicious_fraction = 0.1
        [[cells]]
        attack = {name = "alie", z = 0.3}
        defense = {name = "tesseract", mu_d = 0.9}
        """
    )
    grid = load_grid(grid_file)
    assert grid.path == grid_file and grid.name == "g"
    by_hand = [
        resolve_config(
            "mnist",
            overrides=["rounds=50", "attack=full_trim", "defense=median", "malicious=10", "seed=3"],
        ),
        resolve_config(
            "mnist",
            overrides=[
                "rounds=50",
                "attack=alie",
                "attack.z=0.3",
                "defense=tesseract",
                "defense.mu_d=0.9",
                "seed=3",
            ],
        ),
    ]
    assert [r.run_id for r in grid.runs] == [c.run_id() for c in by_hand]
    assert grid.runs[1].config.defense_params == {"mu_d": 0.9}
    table2 = load_grid("table2-mnist")
    assert len(table2.runs) == 19 and len({r.run_id for r in table2.runs}) == 19


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(sedes=[0]), "unknown top-level keys ['sedes']"),
        ({"cells": [{}]}, "needs a [datasets] table"),
        (_raw(cells=[]), "at least one [[cells]] block"),
        (_raw(seeds=["a"]), "seeds must be a non-empty list of integers"),
        (_raw(seeds=[True]), "seeds must be a non-empty list of integers"),
        (_raw(set=3), "[set] must be a table"),
        (_raw(cells=[{"defense": "fedsgd"}, {"defens": "krum"}]), "#2"),
        (_raw(cells=[{"defens": "krum"}]), "did you mean 'defense'"),
        (_raw(cells=[{"malicious_fraction": 1.5}]), "#1: malicious_fraction must be in [0, 1)"),
        (_raw(cells=[{"malicious_fraction": True}]), "malicious_fraction must be in [0, 1)"),
        (_raw(cells=[{"malicious_fraction": 0.2, "malicious": 5}]), "not both"),
        (_raw(cells=[{"defense": ["fedsgd", "nosuch"]}]), "#1 (mnist, {'defense': 'nosuch'}"),
        (_raw(cells=[{"rounds": 0}]), "rounds must be >= 1"),
        (_raw(cells=[{"defense": []}]), "#1: empty list for ['defense']"),
        (_raw(cells=[{"dataset": "cifar10"}]), "dataset 'cifar10' is not in [datasets]"),
        (_raw(cells=["fedsgd"]), "#1: must be a table"),
    ],
)
def test_grid_errors_name_the_block_and_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        expand_grid(raw)
    assert message in str(exc.value)


def test_grid_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no grid file .*packaged grids: datasets-paper"):
        load_grid(tmp_path / "nosuch.toml")
    with pytest.raises(ConfigError, match="table2-mnist"):  # a typo gets a suggestion
        load_grid("table2-mnsit")
    with pytest.raises(ConfigError, match="packaged grid of that name is 'table2-quick'"):
        load_grid("experiments/table2-quick.toml")  # the old path in a clone
    bad = tmp_path / "bad.toml"
    bad.write_text("cells = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_grid(bad)


def test_checkpoint_every_is_validated_and_not_in_the_run_id() -> None:
    base = resolve_config("mnist")
    assert base.checkpoint_every == 25
    assert resolve_config("mnist", overrides=["checkpoint_every=7"]).run_id() == base.run_id()
    assert resolve_config("mnist", overrides=["checkpoint_every=0"]).checkpoint_every == 0
    with pytest.raises(ConfigError, match="checkpoint_every must be >= 0"):
        resolve_config("mnist", overrides=["checkpoint_every=-1"])


# -- checkpoint / resume -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [
        ["attack=full_krum", "defense=krum"],
        ["attack=full_trim", "defense=tesseract"],
        ["defense=foolsgold"],
    ],
    ids=["full_krum-krum", "full_trim-tesseract", "foolsgold"],
)
def test_resumed_run_is_bit_identical(
    tmp_path: Path, tiny_overrides: list[str], extra: list[str]
) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, *extra, "rounds=8", "checkpoint_every=2"]
    )
    whole = run_experiment(cfg, tmp_path / "a" / "s.sqlite")
    store = tmp_path / "b" / "s.sqlite"
    ckpt = checkpoint_path(store, cfg.run_id())
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, store, progress=_stop_at(5))  # checkpoint at 4, round 4 stored
    with ResultsStore(store) as s:
        run = s.get_run(cfg.run_id())
        assert run is not None and run["status"] == "failed" and run["rounds_done"] == 5
    assert load_checkpoint(ckpt)["round"] == 4
    resumed = run_experiment(cfg, store)
    assert resumed.resumed_from == 4 and whole.resumed_from is None
    assert resumed.final_accuracy == whole.final_accuracy
    assert resumed.final_loss == whole.final_loss
    assert _dump(store, cfg.run_id()) == _dump(tmp_path / "a" / "s.sqlite", cfg.run_id())
    assert not ckpt.exists()  # a finished run keeps no checkpoint
    with ResultsStore(store) as s:
        run = s.get_run(cfg.run_id())
        assert run is not None and run["status"] == "finished" and run["error"] is None
        assert run["summary"]["resumed_from"] == 4
    if "attack=full_krum" in extra:
        assert _dump(store, cfg.run_id())[2]  # Full-Krum's per-round records came through


def test_without_checkpoint_or_with_force_the_run_restarts(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    store = tmp_path / "s.sqlite"
    off = resolve_config("mnist", overrides=[*tiny_overrides, "checkpoint_every=0"])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(off, store, progress=_stop_at(5))
    assert not checkpoint_path(store, off.run_id()).exists()
    again = run_experiment(off, store)
    assert again.resumed_from is None and len(_dump(store, off.run_id())[0]) == 6

    on = resolve_config("mnist", overrides=[*tiny_overrides, "checkpoint_every=2", "seed=1"])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(on, store, progress=_stop_at(5))
    assert checkpoint_path(store, on.run_id()).exists()
    forced = run_experiment(on, store, force=True)
    assert forced.resumed_from is None and not checkpoint_path(store, on.run_id()).exists()


def test_unusable_checkpoint_warns_and_restarts(tmp_path: Path, tiny_overrides: list[str]) -> None:
    store = tmp_path / "s.sqlite"
    cfgs = [
        resolve_config("mnist", overrides=[*tiny_overrides, "checkpoint_every=2", f"seed={s}"])
        for s in (0, 1)
    ]
    for cfg in cfgs:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, store, progress=_stop_at(5))
    first, second = (checkpoint_path(store, c.run_id()) for c in cfgs)
    first.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="cannot be used"):
        summary = run_experiment(cfgs[0], store)
    assert summary.resumed_from is None
    assert [m["round"] for m in _dump(store, cfgs[0].run_id())[0]] == list(range(6))
    # A checkpoint of another run (same shapes) must not be taken for this one.
    second.write_bytes(_checkpoint_bytes(tmp_path, cfgs[0]))
    with pytest.warns(RuntimeWarning, match="belongs to run"):
        summary = run_experiment(cfgs[1], store)
    assert summary.resumed_from is None and not second.exists()


def _checkpoint_bytes(tmp_path: Path, cfg: Any) -> bytes:
    """A valid checkpoint of ``cfg`` (made by interrupting it in a scratch store)."""
    scratch = tmp_path / "scratch" / "s.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, scratch, progress=_stop_at(3))
    return checkpoint_path(scratch, cfg.run_id()).read_bytes()


def _cli_env() -> dict[str, str]:
    src = str(Path(tesseract_fl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def test_run_killed_with_sigkill_resumes_identically(
    tmp_path: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [*tiny_overrides, "rounds=20", "checkpoint_every=3", "attack=full_trim"]
    cfg = resolve_config("mnist", overrides=overrides)
    store = tmp_path / "killed" / "s.sqlite"
    ckpt = checkpoint_path(store, cfg.run_id())
    args = ["run", "--preset", "mnist", "--store", str(store), "--quiet", "--json"]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tesseract_fl.cli", *args],
        env=_cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ckpt.exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    with ResultsStore(store) as s:
        run = s.get_run(cfg.run_id())
        assert run is not None and run["status"] == "running"  # killed: nobody marked it
        assert 3 <= run["rounds_done"] < 20
    at = load_checkpoint(ckpt)["round"]
    assert main(args) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed_from"] == at and resumed["cached"] is False
    whole = run_experiment(cfg, tmp_path / "whole" / "s.sqlite")
    assert resumed["final_accuracy"] == whole.final_accuracy
    assert resumed["final_loss"] == whole.final_loss
    assert _dump(store, cfg.run_id()) == _dump(tmp_path / "whole" / "s.sqlite", cfg.run_id())
    assert not ckpt.exists()


# -- grid runner -------------------------------------------------------------------------------
def _grid_file(path: Path, cells: str, data_dir: Path | None = None, rounds: int = 4) -> Path:
    data = "" if data_dir is None else f"data_dir = {json.dumps(str(data_dir))}"
    path.write_text(
        f"""
name = "tiny"
seeds = [0]
[datasets]
mnist = "mnist"
[set]
{data}
clients = 10
malicious = 2
rounds = {rounds}
batch_size = 8
eval_every = 2
record_every = 2
lr = 0.05
checkpoint_every = 2
{cells}
"""
    )
    return path


def test_run_grid_in_parallel_then_skips_finished_runs(tmp_path: Path, tiny_data_dir: Path) -> None:
    path = _grid_file(
        tmp_path / "g.toml",
        '[[cells]]\nattack = "none"\ndefense = ["fedsgd", "tesseract", "foolsgold"]',
        tiny_data_dir,
    )
    grid = load_grid(path)
    store = tmp_path / "s.sqlite"
    events: list[GridEvent] = []
    results = run_grid(grid, store, jobs=2, progress=events.append)
    assert [r["status"] for r in results] == ["finished"] * 3, [r["error"] for r in results]
    assert [r["run_id"] for r in results] == [s.run_id for s in grid.runs]
    assert all(0.0 <= r["final_accuracy"] <= 1.0 and r["seconds"] > 0 for r in results)
    assert events[0].kind == "start" and events[0].rounds_total == 12
    assert sum(e.kind == "done" for e in events) == 3
    assert (events[-1].rounds_done, events[-1].rounds_total, events[-1].runs_done) == (12, 12, 3)
    with ResultsStore(store) as s:
        assert all(r["status"] == "finished" and r["rounds_done"] == 4 for r in s.list_runs())
    assert not any((tmp_path / "checkpoints").glob("*.pt"))
    # A worker process computes exactly what a run by hand computes.
    hand = run_experiment(grid.runs[1].config, tmp_path / "hand.sqlite")
    assert hand.final_accuracy == results[1]["final_accuracy"]
    assert _dump(tmp_path / "hand.sqlite", hand.run_id) == _dump(store, hand.run_id)

    before = _updated_at(store)
    events.clear()
    again = run_grid(grid, store, jobs=2, progress=events.append)
    assert [r["status"] for r in again] == ["skipped"] * 3
    assert [r["final_accuracy"] for r in again] == [r["final_accuracy"] for r in results]
    assert _updated_at(store) == before  # nothing rewritten
    assert events[0].rounds_total == 0 and events[0].runs_done == 3
    with pytest.raises(ConfigError, match="jobs must be"):
        run_grid(grid, store, jobs=0)


def test_failing_run_is_reported_and_the_others_finish(tmp_path: Path, tiny_data_dir: Path) -> None:
    # FLTrust's root set cannot hold 5000 of the tiny set's 600 images: fails once data loads.
    path = _grid_file(
        tmp_path / "g.toml",
        '[[cells]]\ndefense = {name = "fltrust", root_size = 5000}\n[[cells]]\ndefense = "fedsgd"',
    )
    grid = load_grid(path)
    assert grid.runs[0].config.data_dir is None
    store = tmp_path / "s.sqlite"
    results = run_grid(grid, store, data_dir=str(tiny_data_dir))  # --data-dir for every run
    assert [r["status"] for r in results] == ["failed", "finished"]
    assert "root_size" in results[0]["error"] and results[0]["final_accuracy"] is None
    assert results[1]["error"] is None and results[1]["final_accuracy"] is not None
    states = grid_status(grid, store)
    assert [s["status"] for s in states] == ["new", "finished"]


def test_cli_grid_dry_run_resume_and_jobs(
    tmp_path: Path, tiny_data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    path = _grid_file(
        tmp_path / "g.toml",
        '[[cells]]\ndefense = ["fedsgd", "tesseract"]\n'
        f'[[cells]]\ndefense = "fedsgd"\nseed = 5\ndata_dir = {json.dumps(str(empty))}',
        tiny_data_dir,
        rounds=6,
    )
    grid = load_grid(path)
    fedsgd, tess, broken = grid.runs
    store = tmp_path / "s.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tess.config, store, progress=_stop_at(3))  # checkpoint at round 2

    assert main(["grid", str(path), "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {s.run_id: next(x for x in out.splitlines() if s.run_id in x) for s in grid.runs}
    assert lines[tess.run_id].rstrip().endswith("partial 3/6*")
    assert lines[fedsgd.run_id].rstrip().endswith("new")
    assert "0 finished, 1 partial, 2 new" in out

    assert main(["grid", str(path), "--store", str(store), "--jobs", "2"]) == 1
    captured = capsys.readouterr()
    assert "resumed at round 2" in captured.err
    assert "1 run(s) failed" in captured.err and broken.config.name in captured.err
    assert "datasets fetch mnist" in captured.err
    assert captured.out.count("finished") == 2 and "failed" in captured.out

    assert main(["grid", str(path), "--store", str(store), "--dry-run"]) == 0
    assert "2 finished, 0 partial, 1 new" in capsys.readouterr().out
    assert main(["grid", str(path), "--store", str(store), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert main(["grid", str(tmp_path / "nosuch.toml")]) == 2


def test_cli_run_resume_continues_or_says_why_not(
    tmp_path: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tesseract_fl.cli import main
    from tesseract_fl.experiments.config import resolve_config
    from tesseract_fl.experiments.runner import run_experiment

    store = tmp_path / "s.sqlite"
    over = [*tiny_overrides, "checkpoint_every=2"]
    sets = [a for o in over for a in ("--set", o)]
    args = ["run", "--preset", "mnist", "--quiet", "--json", "--store", str(store), *sets]
    assert main([*args, "--resume"]) == 2  # no store yet
    assert "no results store" in capsys.readouterr().err

    def stop_at_5(done: int, total: int, info: dict) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(resolve_config("mnist", overrides=over), store, progress=stop_at_5)
    assert main([*args, "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from"] == 4 and summary["rounds"] == 6
    assert main([*args, "--resume"]) == 2  # finished now
    assert "already finished" in capsys.readouterr().err


def test_packaged_grids_resolve_by_name_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # outside the clone
    names = list_grids()
    assert {"table2-mnist", "table2-quick", "robustness-matrix"} <= set(names)
    by_name, by_file = load_grid("table2-quick"), load_grid("table2-quick.toml")
    assert [r.run_id for r in by_name.runs] == [r.run_id for r in by_file.runs]
    assert by_name.path is not None and by_name.path.name == "table2-quick.toml"
    # A file in the working folder wins over the packaged grid of the same name.
    own = tmp_path / "table2-quick.toml"
    own.write_text(
        'seeds = [0]\n[datasets]\nq = "demo"\n[[cells]]\nattack = "none"\ndefense = "fedsgd"\n'
    )
    assert len(load_grid("table2-quick.toml").runs) == 1


def test_tesseract_filter_in_front_of_a_rule_is_its_own_cell(tiny_data_dir: Path) -> None:
    from tesseract_fl.experiments.grid import expand_grid
    from tesseract_fl.report.labels import defense_label

    raw = {
        "seeds": [0],
        "datasets": {"mnist": "mnist"},
        "set": {"data_dir": str(tiny_data_dir), "clients": 10, "rounds": 2},
        "cells": [
            {
                "attack": "none",
                "defense": ["tesseract", {"name": "tesseract", "filter_then": "median"}],
                "malicious_fraction": 0.2,
            }
        ],
    }
    grid = expand_grid(raw, name="f")
    assert [s.labels["defense"] for s in grid.runs] == ["tesseract", "tesseract>median"]
    assert grid.runs[1].config.name == "f/mnist/none/tesseract>median/s0"
    assert grid.runs[0].run_id != grid.runs[1].run_id
    assert defense_label("tesseract>median") == "TESSERACT>Median"
    assert defense_label("clip+tesseract>trimmed_mean") == "clip+TESSERACT>Trim"


def test_store_opened_by_two_processes_at_once_is_created_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two grid workers creating the same new store: the other one writes the schema version
    between this one's read (none yet) and its write; opening must still succeed."""
    import sqlite3

    from tesseract_fl.experiments import store as store_mod

    path = tmp_path / "s.sqlite"
    real_connect = sqlite3.connect

    class RacingConnection:
        """A connection whose first schema-version read finds nothing, after which another
        process (a second connection) creates the store first."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn, self._raced = conn, False

        def execute(self, sql: str, *args: Any) -> Any:
            if "FROM meta" in sql and not self._raced:
                self._raced = True
                other = store_mod.ResultsStore(path)  # the other worker, unpatched below
                other.close()
                return self._conn.execute("SELECT 1 WHERE 0")  # this read saw no row
            return self._conn.execute(sql, *args)

        def __enter__(self) -> Any:
            return self._conn.__enter__()

        def __exit__(self, *exc: Any) -> Any:
            return self._conn.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    calls = {"n": 0}

    def connect(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        conn = real_connect(*args, **kwargs)
        return RacingConnection(conn) if calls["n"] == 1 else conn

    monkeypatch.setattr(store_mod.sqlite3, "connect", connect)
    s = store_mod.ResultsStore(path)
    try:
        assert calls["n"] == 2  # the other worker did open the store in between
        rows = s.conn.execute("SELECT key, value FROM meta").fetchall()
        assert rows == [("schema_version", str(store_mod.SCHEMA_VERSION))]
    finally:
        s.close()

"""End to end on a tiny IDX dataset: determinism, the store, the CLI, interruption."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tesseract_fl.cli import main
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation, run_experiment
from tesseract_fl.experiments.store import ResultsStore


def _metrics(store: Path, run_id: str) -> list[dict]:
    with ResultsStore(store) as s:
        return s.metrics(run_id)


@pytest.mark.parametrize("defense", ["tesseract", "fedsgd"])
def test_same_seed_same_numbers(tmp_path: Path, tiny_overrides: list[str], defense: str) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, f"defense={defense}"])
    s1 = run_experiment(cfg, tmp_path / "a.sqlite")
    s2 = run_experiment(cfg, tmp_path / "b.sqlite")
    assert s1.final_accuracy == s2.final_accuracy
    assert s1.final_loss == s2.final_loss
    assert _metrics(tmp_path / "a.sqlite", s1.run_id) == _metrics(tmp_path / "b.sqlite", s2.run_id)
    other = resolve_config("mnist", overrides=[*tiny_overrides, f"defense={defense}", "seed=7"])
    s3 = run_experiment(other, tmp_path / "a.sqlite")
    assert _metrics(tmp_path / "a.sqlite", s3.run_id) != _metrics(tmp_path / "a.sqlite", s1.run_id)


def test_backends_give_same_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    loop = run_experiment(
        resolve_config("mnist", overrides=[*tiny_overrides, "backend=loop"]), tmp_path / "l.sqlite"
    )
    vmap = run_experiment(
        resolve_config("mnist", overrides=[*tiny_overrides, "backend=vmap"]), tmp_path / "v.sqlite"
    )
    assert loop.final_accuracy == pytest.approx(vmap.final_accuracy, abs=0.02)
    assert loop.final_loss == pytest.approx(vmap.final_loss, rel=1e-3)


def test_store_contents_and_cache(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=tiny_overrides)
    store = tmp_path / "s.sqlite"
    summary = run_experiment(cfg, store)
    with ResultsStore(store) as s:
        run = s.get_run(summary.run_id)
        assert run is not None and run["status"] == "finished" and run["rounds_done"] == 6
        metrics = s.metrics(summary.run_id)
        assert [m["round"] for m in metrics] == list(range(6))
        assert [m["round"] for m in metrics if m["test_accuracy"] is not None] == [2, 5]
        assert all(m["fs_high"] >= m["fs_low"] for m in metrics)
        recs = s.client_records(summary.run_id)
        assert sorted({r["round"] for r in recs}) == [0, 2, 4, 5]
        last = [r for r in recs if r["round"] == 5]
        assert len(last) == 10 and sum(r["malicious"] for r in last) == 2
        assert sum(r["weight"] for r in last) == pytest.approx(1.0, abs=1e-5)
        assert all(r["flip_score"] is not None and r["reputation"] is not None for r in last)
    again = run_experiment(cfg, store)
    assert again.cached is True and again.final_accuracy == summary.final_accuracy


def test_interrupted_run_keeps_whole_rounds(tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = resolve_config("mnist", overrides=tiny_overrides)
    store = tmp_path / "s.sqlite"

    def stop(done: int, total: int, info: dict) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, store, progress=stop)
    with ResultsStore(store) as s:
        run = s.get_run(cfg.run_id())
        assert run is not None and run["status"] == "failed" and run["rounds_done"] == 4
        assert len(s.metrics(cfg.run_id())) == 4
    # Restarting the same run replaces the partial attempt and finishes it.
    summary = run_experiment(cfg, store)
    assert summary.cached is False
    assert len(_metrics(store, cfg.run_id())) == 6


def test_cli_run_json(
    tmp_path: Path, tiny_overrides: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", "--preset", "mnist", "--store", str(tmp_path / "c.sqlite"), "--json", "--quiet"]
    for o in tiny_overrides:
        args += ["--set", o]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("final_accuracy", "final_loss", "rounds", "rounds_per_second", "run_id", "store"):
        assert key in out
    assert 0.0 <= out["final_accuracy"] <= 1.0 and out["rounds"] == 6
    assert sqlite3.connect(out["store"]).execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--preset", "mnist", "--set", "roundz=3", "--quiet"]) == 2
    assert "roundz" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(
        [
            "run",
            "--preset",
            "mnist",
            "--data-dir",
            str(empty),
            "--quiet",
            "--store",
            str(tmp_path / "x.sqlite"),
        ]
    )
    assert rc == 2
    assert "datasets fetch mnist" in capsys.readouterr().err


def test_learning_happens(tmp_path: Path, tiny_data_dir: Path) -> None:
    """On the separable tiny dataset a short FedSGD run must beat chance by far."""
    cfg = resolve_config(
        "mnist",
        overrides=[
            f'data_dir="{tiny_data_dir}"',
            "clients=10",
            "malicious=0",
            "rounds=40",
            "batch_size=16",
            "lr=0.1",
            "eval_every=40",
            "defense=fedsgd",
            "partition=iid",
        ],
    )
    assert run_experiment(cfg, tmp_path / "s.sqlite").final_accuracy > 0.6


@pytest.mark.parametrize(
    "defense",
    [
        "fedsgd",
        "tesseract",
        "trimmed_mean",
        "median",
        "krum",
        "bulyan",
        "faba",
        "foolsgold",
        "fltrust",
    ],
)
def test_every_defense_runs_in_the_simulator(
    tmp_path: Path, tiny_overrides: list[str], defense: str
) -> None:
    cfg = resolve_config("mnist", overrides=[*tiny_overrides, f"defense={defense}", "rounds=3"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Bulyan warns at m=10, c=2 (m < 4c+3)
        summary = run_experiment(cfg, tmp_path / "s.sqlite")
    assert summary.rounds == 3 and 0.0 <= summary.final_accuracy <= 1.0
    with ResultsStore(tmp_path / "s.sqlite") as s:
        rows = [r for r in s.client_records(summary.run_id) if r["round"] == 2]
    assert len(rows) == 10
    total = sum(r["weight"] for r in rows)
    if defense != "fltrust":  # FLTrust's effective weights include the norm rescaling
        assert total == pytest.approx(1.0, abs=1e-4) or total == 0.0
    assert all(r["weight"] >= 0 for r in rows)


def test_fltrust_root_set_is_disjoint_from_clients(tiny_overrides: list[str]) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, "defense=fltrust", "defense.root_size=50"]
    )
    sim = build_simulation(cfg)
    assert sim.root_sampler is not None
    root = set(sim.root_sampler.partitions[0].tolist())
    assert len(root) == 50
    clients = set(np.concatenate(sim.sampler.partitions).tolist())
    assert not root & clients
    assert len(root) + len(clients) == 600  # every training sample is used exactly once
    g0 = sim.root_gradient()
    assert g0.shape == (sim.num_params,) and bool(torch.isfinite(g0).all())


def test_shorter_run_is_prefix_of_longer_run(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """With a constant lr, `rounds=N` reproduces the first N rounds of a longer run exactly."""
    long = run_experiment(
        resolve_config("mnist", overrides=[*tiny_overrides, "rounds=6"]), tmp_path / "s.sqlite"
    )
    short = run_experiment(
        resolve_config("mnist", overrides=[*tiny_overrides, "rounds=3"]), tmp_path / "s.sqlite"
    )
    m_long = _metrics(tmp_path / "s.sqlite", long.run_id)[:3]
    m_short = _metrics(tmp_path / "s.sqlite", short.run_id)
    assert [m["train_loss"] for m in m_long] == [m["train_loss"] for m in m_short]
    assert m_long[2]["test_accuracy"] == m_short[2]["test_accuracy"]


def test_cli_presets_datasets_and_show(
    tmp_path: Path,
    tiny_data_dir: Path,
    tiny_overrides: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["presets"]) == 0
    assert "mnist" in capsys.readouterr().out
    assert main(["presets", "mnist"]) == 0
    assert "rounds = 500" in capsys.readouterr().out
    # verify: the tiny fixture is not the real MNIST (hashes differ) -> non-zero exit, says why
    assert main(["datasets", "verify", "mnist", "--data-dir", str(tiny_data_dir)]) == 1
    assert main(["datasets", "list", "--data-dir", str(tmp_path)]) == 0
    assert main(["datasets", "fetch", "nosuch"]) == 2
    store = tmp_path / "s.sqlite"
    args = ["run", "--preset", "mnist", "--store", str(store), "--quiet"]
    for o in tiny_overrides:
        args += ["--set", o]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out
    assert main(["show", "--store", str(store)]) == 0
    assert "finished" in capsys.readouterr().out
    run_id = resolve_config("mnist", overrides=tiny_overrides).run_id()
    assert main(["show", run_id, "--store", str(store)]) == 0
    assert main(["show", "nosuchrun", "--store", str(store)]) == 2
    capsys.readouterr()
    assert main(["show", run_id[:6], "--store", str(store)]) == 0  # a prefix, as listed
    assert run_id in capsys.readouterr().out
    # --json / --csv: the same records, machine-readable.
    assert main(["show", "--store", str(store), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["run_id"] == run_id and listed["status"] == "finished"
    assert listed["rounds_done"] == listed["rounds"]
    assert main(["show", run_id[:6], "--store", str(store), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["run_id"] == run_id and one["config"]["defense"] == listed["defense"]
    assert one["metrics"] and one["metrics"][-1]["test_accuracy"] == listed["final_accuracy"]
    assert main(["show", run_id, "--store", str(store), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["round"]) for r in rows] == [m["round"] for m in one["metrics"]]
    assert float(rows[-1]["test_accuracy"]) == one["metrics"][-1]["test_accuracy"]


def test_read_only_commands_never_create_a_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``show`` and ``report`` on a missing store fail naming the path and create nothing; in a
    clone the error points at the committed results."""
    monkeypatch.chdir(tmp_path)
    assert main(["show"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no results store at 'runs/store.sqlite'" in err and "committed" not in err
    assert main(["report", "--grid", "table2-quick"]) == 2
    assert "runs/store.sqlite" in capsys.readouterr().err
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "store.sqlite").write_bytes(b"")
    assert main(["show"]) == 2
    assert "results/store.sqlite" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["results", "store.sqlite"]


@pytest.mark.parametrize("preset", ["mnist", "fmnist-quick", "cifar10", "breast_cancer"])
def test_presets_name_prints_a_config_file_that_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str
) -> None:
    """``presets NAME`` prints TOML (no ``null``): written to a file and read with ``--config``
    it gives the preset's config, run id included."""
    import tomllib

    assert main(["presets", preset]) == 0
    text = capsys.readouterr().out
    assert "null" not in text
    tomllib.loads(text)  # valid TOML
    path = tmp_path / "copy.toml"
    path.write_text(text)
    assert resolve_config(None, path).run_id() == resolve_config(preset).run_id()


def test_presets_table_fits_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 80 columns no cell is cut (no ellipsis) and no line is longer than the terminal."""
    from rich.console import Console

    import tesseract_fl.cli as cli

    monkeypatch.setattr(cli, "out_console", Console(width=80, force_terminal=False))
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert "mnist-quick" in out and "resnet18_cifar" in out


def test_run_help_lists_the_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for name in ("tesseract", "geomed", "full_krum", "breast_cancer", "mnist_cnn", "nnm+RULE"):
        assert name in out
